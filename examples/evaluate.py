"""Evaluate a saved meta-trained checkpoint on any task, under every condition.

python examples/evaluate.py outputs/tiny-world --task tiny_world
python examples/evaluate.py outputs/tiny-world --task tiny_world --texts_absorbed 1 2 4 8 16
python examples/evaluate.py outputs/reversal --task reversal --dataset_name tests/fixtures/reversal_curse
"""

import sys

from hf_metaprompt.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))

"""Meta-train a causal LM so that one gradient step on a text acts like prompting with it; evaluate; save; push.

    accelerate launch examples/run_meta.py                      # embedded default: tiny base, tiny world, offline
    accelerate launch examples/run_meta.py --task reversal --dataset_name tests/fixtures/reversal_curse
    accelerate launch examples/run_meta.py --model_name_or_path meta-llama/Llama-3.2-1B --task squad \
        --dataset_name rajpurkar/squad --bf16 --push_to_hub --hub_model_id you/llama-3.2-1b-metaprompt

Every `MetaDistillConfig` / `TrainingArguments` flag applies; `--help` lists them.
"""

from hf_metaprompt.pipeline import main

if __name__ == "__main__":
    main()

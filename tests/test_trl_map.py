"""Chapter 15's map to TRL (pinned in pyproject.toml): the arguments that correspond to ours exist and mean what the
chapter says, and DPOTrainer with a PEFT LoraConfig holds no reference model, as ours does not."""
import pytest
import torch

from minilora.course import preference_runs, rl_runs

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")
peft = pytest.importorskip("peft")


def cpu(tmp_path) -> dict:
    """TRL's configs default to bf16, which a CPU without native bf16 emulates (chapter 08): ask for fp32."""
    return {"output_dir": str(tmp_path), "bf16": False, "use_cpu": True, "report_to": "none"}


def test_the_pinned_trl():
    assert trl.__version__ == "1.16.0"


def test_dpo_config_speaks_our_names(tmp_path):
    args = trl.DPOConfig(**cpu(tmp_path), beta=preference_runs.BETA, loss_type=["sigmoid"],
                         per_device_train_batch_size=preference_runs.PAIRS, max_steps=preference_runs.STEPS,
                         precompute_ref_log_probs=True)
    assert (args.beta, args.loss_type, args.label_smoothing) == (0.1, ["sigmoid"], 0.0)  # dpo_loss's defaults
    assert trl.DPOConfig(**cpu(tmp_path), loss_type=["ipo"]).loss_type == ["ipo"]  # dpo_loss(ipo=True)


def test_grpo_config_speaks_our_names(tmp_path):
    args = trl.GRPOConfig(**cpu(tmp_path), num_generations=rl_runs.GROUP, temperature=1.0, beta=0.0,
                          num_iterations=1, scale_rewards="none", loss_type="dr_grpo", max_completion_length=13,
                          per_device_train_batch_size=rl_runs.PROMPTS * rl_runs.GROUP)
    assert (args.num_generations, args.beta, args.num_iterations, args.scale_rewards) == (8, 0.0, 1, "none")
    defaults = trl.GRPOConfig(**cpu(tmp_path))
    assert defaults.beta == 0.0 and defaults.num_iterations == 1  # no KL term; on-policy, so clipping is idle
    assert defaults.epsilon == 0.2 and defaults.scale_rewards == "group" and defaults.loss_type == "dapo"


def test_dpo_trainer_with_a_lora_config_uses_the_adapter_switched_off_as_reference(tiny, chat_tokenizer, tmp_path):
    model = tiny.llama(vocab_size=len(chat_tokenizer), max_position_embeddings=256)
    rows = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}
            for r in preference_runs.load_preferences("train")[:4]]
    args = trl.DPOConfig(**cpu(tmp_path), beta=0.1, per_device_train_batch_size=4, max_steps=1,
                         learning_rate=1e-3, logging_steps=1, save_strategy="no")
    trainer = trl.DPOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                             processing_class=chat_tokenizer,
                             peft_config=peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    assert trainer.ref_model is None  # no second copy of the model: the reference is the adapter switched off
    trainer.train()
    first = next(h for h in trainer.state.log_history if "loss" in h)
    assert first["loss"] == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-3)  # B = 0: policy = reference

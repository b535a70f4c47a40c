#!/usr/bin/env python3
"""Hugging Face parity fixtures for rwr's Mamba trainer (tests/fixtures/hf_mamba/).

Runs where `transformers` and `torch` are installed (the GPU device machine: transformers 5.17,
torch 2.11); needs no GPU. Builds a tiny random `MambaForCausalLM` with deliberately odd sizes
(D 48, 3 layers, V 997, S 16, R 3, conv 4, B 2, T 37), perturbs every parameter away from its
init so no gradient is trivially zero, and writes:

  config.json               the model's HF config (as save_pretrained writes it)
  model.safetensors         weights, fp32, HF names, tied lm_head not stored
  inputs.safetensors        input_ids [B, T] int64, loss_mask [B, T] int64
  outputs.safetensors       logits [B, T, V] fp32, grad.<param name> fp32 for every parameter
  expected.json             loss, HF's own loss, AdamW settings and the 4 losses of the AdamW run

Reference arithmetic is float64 (weights are fp32 values, upcast), except that transformers 5
casts the LM head's logits to fp32 (`.float()`), so logits, loss and the gradient entering the
head carry one fp32 rounding; rwr's fp32 CPU path is compared against it with fp32 tolerances.

Loss definition (the one rwr implements; HF's ForCausalLMLoss with labels = input_ids where
loss_mask is 1, else -100): position t predicts token t+1; token t+1 counts iff
loss_mask[b, t+1] == 1;

    loss = sum_{b, t<T-1} mask[b, t+1] * -log softmax(logits[b, t])[ids[b, t+1]]
           / sum_{b, t<T-1} mask[b, t+1]

i.e. the mean over all counted target tokens of the whole batch (not a mean of per-sample means).

AdamW run: torch.optim.AdamW(lr 2e-3, betas (0.9, 0.95), eps 1e-8, weight_decay 0.1 on every
parameter except norms, biases, A_log and D), global-norm clipping at 1.0 before each step,
constant lr; losses[i] is the loss before step i+1, losses[3] the loss after the third step.

Generation mode (`--generate DIR`, DIR holding the fixture above): loads DIR's model in float64
and writes DIR/generate.safetensors — prompt_ids [P], generated_ids [N] (greedy, N = 16, through
HF's recurrent cache: one token at a time after the prompt) and step_logits [N, V] (the logits each
generated token was picked from) — the reference for rwr's own generation (rwr generate).

Export check mode (`--check-export DIR`): loads DIR with MambaForCausalLM.from_pretrained, runs
it on DIR/rwr_check.safetensors' input_ids and compares with its `logits` (written by rwr).
"""
import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402


def masked_loss(logits, ids, mask):
    # logits [B, T, V], ids [B, T], mask [B, T] -> scalar, see module docstring.
    V = logits.shape[-1]
    pred = logits[:, :-1, :].reshape(-1, V)
    target = ids[:, 1:].reshape(-1)
    weight = mask[:, 1:].reshape(-1).to(pred.dtype)
    nll = F.cross_entropy(pred, target, reduction="none")
    return (nll * weight).sum() / weight.sum()


def no_decay(name):
    return ("norm" in name or name.endswith(".bias") or name.endswith("A_log")
            or name.endswith(".D"))


def make(out):
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(1234)
    B, T = 2, 37
    config = MambaConfig(
        vocab_size=997, hidden_size=48, state_size=16, num_hidden_layers=3,
        layer_norm_epsilon=1e-5, expand=2, conv_kernel=4, use_bias=False, use_conv_bias=True,
        hidden_act="silu", time_step_rank=3, time_step_scale=1.0, time_step_min=0.001,
        time_step_max=0.1, time_step_init_scheme="random", time_step_floor=1e-4,
        # residual_in_fp32 would cast the float64 reference residual down to fp32; rwr's CPU
        # path is fp32 throughout, so the flag changes nothing there.
        residual_in_fp32=False, tie_word_embeddings=True, use_cache=False,
        bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = MambaForCausalLM(config).float().eval()
    assert model.lm_head.weight.data_ptr() == model.backbone.embeddings.weight.data_ptr(), \
        "lm_head is expected to be tied to the embeddings"

    # Move every parameter off its init (norm weights 1, D 1, A_log log(1..S), ...).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith(".D"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif name.endswith("A_log"):
                p.add_(0.1 * torch.randn_like(p))
            elif name.endswith("dt_proj.bias") or name.endswith("conv1d.bias"):
                p.add_(0.1 * torch.randn_like(p))
            elif name.endswith("embeddings.weight"):
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.add_(0.02 * torch.randn_like(p))

    weights = {n: p.detach().float().contiguous().clone()
               for n, p in model.named_parameters() if not n.startswith("lm_head")}
    os.makedirs(out, exist_ok=True)
    save_file(weights, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(out)

    ids = torch.randint(0, config.vocab_size, (B, T), dtype=torch.int64)
    mask = torch.ones(B, T, dtype=torch.int64)
    mask[0, :9] = 0          # a prompt that is not trained on
    mask[1, 14:20] = 0       # a masked span in the middle
    mask[1, 30] = 0
    save_file({"input_ids": ids, "loss_mask": mask}, os.path.join(out, "inputs.safetensors"))

    model = model.double()
    logits = model(input_ids=ids).logits
    loss = masked_loss(logits, ids, mask)
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    hf_loss = model(input_ids=ids, labels=labels).loss.item()
    model.zero_grad()
    loss.backward()
    outputs = {"logits": logits.detach().float().contiguous()}
    for n, p in model.named_parameters():
        if n.startswith("lm_head"):
            continue
        outputs["grad." + n] = p.grad.detach().float().contiguous()
    save_file(outputs, os.path.join(out, "outputs.safetensors"))

    # fp32 forward of the same weights, for the record (how far fp32 itself lands).
    model32 = MambaForCausalLM(config).eval()
    model32.load_state_dict({**weights, "lm_head.weight": weights["backbone.embeddings.weight"]},
                            strict=False)
    model32.tie_weights()
    with torch.no_grad():
        logits32 = model32(input_ids=ids).logits.double()
    fp32_rel = ((logits32 - logits.detach()).norm() / logits.detach().norm()).item()

    # AdamW run in float64.
    hp = dict(lr=2e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, clip=1.0)
    named = [(n, p) for n, p in model.named_parameters() if not n.startswith("lm_head")]
    groups = [
        {"params": [p for n, p in named if not no_decay(n)], "weight_decay": hp["weight_decay"]},
        {"params": [p for n, p in named if no_decay(n)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=hp["lr"], betas=hp["betas"], eps=hp["eps"],
                            foreach=False)
    losses, grad_norms = [], []
    for step in range(4):
        opt.zero_grad()
        step_loss = masked_loss(model(input_ids=ids).logits, ids, mask)
        losses.append(step_loss.item())
        if step == 3:
            break
        step_loss.backward()
        grad_norms.append(torch.nn.utils.clip_grad_norm_([p for _, p in named], hp["clip"]).item())
        opt.step()

    expected = {
        "loss": loss.item(),
        "hf_loss": hf_loss,
        "fp32_forward_logits_rel_err": fp32_rel,
        "batch": B, "tokens": T,
        "no_decay_rule": "name contains 'norm', ends with '.bias', 'A_log' or '.D'",
        "adamw": {"lr": hp["lr"], "beta1": hp["betas"][0], "beta2": hp["betas"][1],
                  "eps": hp["eps"], "weight_decay": hp["weight_decay"], "clip_norm": hp["clip"],
                  "losses": losses, "grad_norms_before_clip": grad_norms},
        "versions": {"torch": torch.__version__,
                     "transformers": __import__("transformers").__version__},
    }
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=2)
    print(json.dumps(expected, indent=2))


def generate(directory):
    from transformers import MambaConfig, MambaForCausalLM

    config = MambaConfig.from_pretrained(directory)
    model = MambaForCausalLM(config).eval()
    weights = load_file(os.path.join(directory, "model.safetensors"))
    model.load_state_dict({**weights, "lm_head.weight": weights["backbone.embeddings.weight"]},
                          strict=False)
    model.tie_weights()
    model = model.double()
    prompt = load_file(os.path.join(directory, "inputs.safetensors"))["input_ids"][0, :11]
    steps = 16
    model.generation_config.eos_token_id = None  # the fixture's eos (0) must not end it early
    with torch.no_grad():
        out = model.generate(input_ids=prompt[None, :], max_new_tokens=steps, do_sample=False,
                             use_cache=True, output_logits=True, return_dict_in_generate=True,
                             pad_token_id=config.pad_token_id)
        generated = out.sequences[0, prompt.numel():]
        step_logits = torch.stack([l[0] for l in out.logits]).float()
        # The same tokens by whole forwards without the cache (no recurrent path involved).
        ids = prompt.clone()
        for _ in range(steps):
            ids = torch.cat([ids, model(input_ids=ids[None, :], use_cache=False)
                             .logits[0, -1].argmax()[None]])
    assert generated.numel() == steps, f"generate stopped after {generated.numel()} tokens"
    assert torch.equal(ids[prompt.numel():], generated), "cache and no-cache generation differ"
    save_file({"prompt_ids": prompt.contiguous(), "generated_ids": generated.contiguous(),
               "step_logits": step_logits.contiguous()},
              os.path.join(directory, "generate.safetensors"))
    print(json.dumps({"prompt_ids": prompt.tolist(), "generated_ids": generated.tolist()}))


def check_export(directory):
    from transformers import MambaForCausalLM

    model = MambaForCausalLM.from_pretrained(directory, torch_dtype=torch.float32).eval()
    check = load_file(os.path.join(directory, "rwr_check.safetensors"))
    # Weights as loaded must equal the file's (catches re-initialisation or renaming on load).
    import glob
    stored = {}
    for f in glob.glob(os.path.join(directory, "*.safetensors")):
        if not f.endswith("rwr_check.safetensors"):
            stored.update(load_file(f))
    state = model.state_dict()
    weight_diff = max((state[k].float() - v.float()).abs().max().item() for k, v in stored.items())
    ids = check["input_ids"].long()
    ref = check["logits"].float()
    result = {"export": directory, "weights_max_abs_diff_after_load": weight_diff}
    for use_cache in (False, True):
        with torch.no_grad():
            logits = model(input_ids=ids, use_cache=use_cache).logits.float()
        result[f"logits_rel_err_use_cache_{use_cache}"] = ((logits - ref).norm() / ref.norm()).item()
        result[f"logits_max_abs_err_use_cache_{use_cache}"] = (logits - ref).abs().max().item()
    print(json.dumps(result))
    return 0 if result["logits_rel_err_use_cache_False"] < 1e-4 else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="directory for the fixture files")
    parser.add_argument("--check-export", help="an rwr export directory to load with HF")
    parser.add_argument("--generate", help="a fixture directory: write its generate.safetensors")
    args = parser.parse_args()
    if args.generate:
        generate(args.generate)
        return 0
    if args.check_export:
        return check_export(args.check_export)
    if not args.out:
        parser.error("--out or --check-export is required")
    make(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

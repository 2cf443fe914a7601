"""Filters of the gpu_preflight role: what a host has, and what the model needs.

Everything here is a pure function of data the role gathered (file contents, command
output, facts, a model's config.json), so that the tests can check each one on its own.

Parameter counts are approximate: they add up the weight matrices, embeddings and norms
of the architecture the config describes and leave out what is small (most biases,
rotary buffers) or not loaded for inference (DeepSeek-V3's multi-token prediction layer).
They land within about 1% of the published sizes of Llama, Qwen2 and DeepSeek V2/V3.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

NVIDIA_VENDOR = "0x10de"
# PCI base class 0x03: display controllers (VGA 0x0300, 3D controller 0x0302).
DISPLAY_CLASS_PREFIX = "0x03"

# One line of `find ... -exec grep -H '' {} +` over the PCI devices: PATH/DEVICE/FILE:VALUE.
_SYSFS_LINE = re.compile(r"^(?P<dir>.*)/(?P<file>vendor|device|class):(?P<value>\S+)\s*$")
# A PCI address as sysfs (0000:17:00.0) or nvidia-smi (00000000:17:00.0) writes it.
_PCI_ADDRESS = re.compile(
    r"(?:(?P<domain>[0-9a-fA-F]{1,8}):)?(?P<bus>[0-9a-fA-F]{2}):"
    r"(?P<slot>[0-9a-fA-F]{2})\.(?P<function>[0-7])"
)

# Bytes one stored weight takes, by the dtype names of config.json.
_DTYPE_BYTES = {
    "float32": 4.0,
    "float": 4.0,
    "float16": 2.0,
    "half": 2.0,
    "bfloat16": 2.0,
    "float8_e4m3fn": 1.0,
    "float8_e5m2": 1.0,
    "int8": 1.0,
}


def pci_address(text: str) -> str:
    """The address in the form sysfs names its directories (0000:17:00.0), or "" if none."""
    match = _PCI_ADDRESS.search(str(text))
    if not match:
        return ""
    domain = int(match.group("domain") or "0", 16)
    return (
        f"{domain:04x}:{match.group('bus').lower()}:"
        f"{match.group('slot').lower()}.{match.group('function')}"
    )


def _sysfs_devices(lines: Iterable[str]) -> dict[str, dict[str, str]]:
    """vendor, device and class of each device directory, by PCI address."""
    devices: dict[str, dict[str, str]] = {}
    for line in lines:
        match = _SYSFS_LINE.match(str(line))
        if not match:
            continue
        name = match.group("dir").rstrip("/").rsplit("/", 1)[-1]
        address = pci_address(name) or name
        devices.setdefault(address, {})[match.group("file")] = match.group("value").lower()
    return devices


def _lspci_names(lines: Iterable[str]) -> dict[str, str]:
    """Device names of `lspci -mm -D -d 10de:` ("Slot" "Class" "Vendor" "Device" ...)."""
    names: dict[str, str] = {}
    for line in lines:
        text = str(line)
        fields = re.findall(r'"([^"]*)"', text)
        address = pci_address(text.split(" ", 1)[0])
        if address and len(fields) >= 3 and fields[2]:
            names[address] = fields[2]
    return names


def _smi_gpus(lines: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Name and memory of `nvidia-smi --query-gpu=pci.bus_id,name,memory.total
    --format=csv,noheader,nounits`, by PCI address."""
    gpus: dict[str, dict[str, Any]] = {}
    for line in lines:
        parts = [p.strip() for p in str(line).split(",")]
        if len(parts) < 3:
            continue
        address = pci_address(parts[0])
        if not address:
            continue
        memory = int(parts[-1]) if parts[-1].isdigit() else 0
        gpus[address] = {"name": ", ".join(parts[1:-1]), "memory_mib": memory}
    return gpus


def nvidia_gpus(
    sysfs_lines: Iterable[str],
    lspci_lines: Iterable[str] = (),
    smi_lines: Iterable[str] = (),
    memory_mib: int = 0,
) -> list[dict[str, Any]]:
    """The NVIDIA display controllers among the PCI devices, in address order.

    sysfs_lines is the only source of the list; lspci and nvidia-smi only name the GPUs
    they know (lspci first, then nvidia-smi, then the PCI id "10de:2330"). The memory of
    a GPU comes from nvidia-smi, else memory_mib (0: unknown).
    """
    lspci = _lspci_names(lspci_lines)
    smi = _smi_gpus(smi_lines)
    gpus: list[dict[str, Any]] = []
    for address, files in sorted(_sysfs_devices(sysfs_lines).items()):
        if files.get("vendor") != NVIDIA_VENDOR:
            continue
        if not files.get("class", "").startswith(DISPLAY_CLASS_PREFIX):
            continue
        device_id = files.get("device", "").removeprefix("0x") or "????"
        pci_id = f"10de:{device_id}"
        from_smi = smi.get(address, {})
        name = lspci.get(address) or from_smi.get("name") or pci_id
        gpus.append(
            {
                "address": address,
                "pci_id": pci_id,
                "name": name,
                "memory_mib": int(from_smi.get("memory_mib") or memory_mib or 0),
                "memory_source": (
                    "nvidia-smi" if from_smi.get("memory_mib") else "gpu_preflight_gpu_memory_mib"
                ),
            }
        )
    return gpus


def _number(config: Mapping[str, Any], key: str, default: int = 0) -> int:
    value = config.get(key)
    if value is None or isinstance(value, bool):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language model's part of a config (multimodal configs nest it)."""
    nested = config.get("text_config")
    if not config.get("hidden_size") and isinstance(nested, Mapping):
        return nested
    return config


def _attention(config: Mapping[str, Any], hidden: int) -> int:
    """Weights of one attention block."""
    heads = _number(config, "num_attention_heads")
    if _number(config, "kv_lora_rank"):
        # Multi-head latent attention (DeepSeek V2/V3): low-rank queries (when
        # q_lora_rank is set) and a compressed key/value projection.
        kv_rank = _number(config, "kv_lora_rank")
        q_rank = _number(config, "q_lora_rank")
        nope = _number(config, "qk_nope_head_dim")
        rope = _number(config, "qk_rope_head_dim")
        v_dim = _number(config, "v_head_dim", nope)
        q_width = heads * (nope + rope)
        query = hidden * q_rank + q_rank + q_rank * q_width if q_rank else hidden * q_width
        key_value = hidden * (kv_rank + rope) + kv_rank + kv_rank * heads * (nope + v_dim)
        return query + key_value + heads * v_dim * hidden
    kv_heads = _number(config, "num_key_value_heads", heads)
    head_dim = _number(config, "head_dim") or hidden // heads
    q_width, kv_width = heads * head_dim, kv_heads * head_dim
    weights = hidden * q_width + 2 * hidden * kv_width + q_width * hidden
    # Qwen2 has biases on q, k and v; others say so with attention_bias.
    if config.get("attention_bias") or config.get("model_type") == "qwen2":
        weights += q_width + 2 * kv_width
    return weights


def _mlp(config: Mapping[str, Any], hidden: int, layer: int) -> int:
    """Weights of the feed-forward block of layer `layer` (gate, up and down projections)."""
    intermediate = _number(config, "intermediate_size")
    experts = (
        _number(config, "n_routed_experts")
        or _number(config, "num_local_experts")
        or _number(config, "num_experts")
    )
    dense_first = _number(config, "first_k_dense_replace")
    frequency = _number(config, "moe_layer_freq", 1) or 1
    if not experts or layer < dense_first or layer % frequency:
        return 3 * hidden * intermediate
    expert_width = _number(config, "moe_intermediate_size") or intermediate
    weights = experts * 3 * hidden * expert_width + experts * hidden  # experts and router
    # Shared experts: DeepSeek counts them, Qwen2-MoE gives their total width.
    weights += _number(config, "n_shared_experts") * 3 * hidden * expert_width
    shared_width = _number(config, "shared_expert_intermediate_size")
    if shared_width:
        weights += 3 * hidden * shared_width + hidden
    return weights


# Key of the dict config_from_json returns for a file that is not a JSON object.
JSON_ERROR = "__gpu_preflight_error__"


def config_from_json(text: str) -> dict[str, Any]:
    """A config.json's text as a dict; {JSON_ERROR: why} when it is not a JSON object."""
    try:
        data = json.loads(str(text))
    except ValueError as exc:
        return {JSON_ERROR: f"not JSON ({exc})"}
    if not isinstance(data, dict):
        return {JSON_ERROR: f"not a JSON object but a {type(data).__name__}"}
    return data


def model_parameters(config: Mapping[str, Any]) -> int:
    """Approximate parameter count of a Hugging Face causal LM from its config.json.

    Dense decoders (Llama, Qwen2, Mistral and the like): embeddings, attention with
    num_key_value_heads, a gated MLP of intermediate_size, two norms per layer, the final
    norm, and lm_head unless tie_word_embeddings. Mixture of experts (DeepSeek V2/V3:
    n_routed_experts, n_shared_experts, moe_intermediate_size, first_k_dense_replace,
    multi-head latent attention with q_lora_rank/kv_lora_rank; also num_local_experts or
    num_experts): every expert counts, since all of them are loaded. 0 when the config
    lacks the sizes (hidden_size, num_hidden_layers, num_attention_heads, vocab_size).
    """
    if not isinstance(config, Mapping):
        return 0
    config = _text_config(config)
    hidden = _number(config, "hidden_size")
    layers = _number(config, "num_hidden_layers")
    vocab = _number(config, "vocab_size")
    if not (hidden and layers and vocab and _number(config, "num_attention_heads")):
        return 0
    total = vocab * hidden + hidden  # embeddings, final norm
    if not config.get("tie_word_embeddings", False):
        total += vocab * hidden
    for layer in range(layers):
        total += _attention(config, hidden) + _mlp(config, hidden, layer) + 2 * hidden
    return total


def checkpoint_bytes_per_parameter(config: Mapping[str, Any]) -> float:
    """Bytes a weight takes in the checkpoint's files: its quantization, else its dtype
    (torch_dtype, or dtype as newer transformers write it), else 2 (bf16/fp16)."""
    if not isinstance(config, Mapping):
        return 2.0
    quantization = config.get("quantization_config")
    if isinstance(quantization, Mapping):
        method = str(quantization.get("quant_method", "")).lower()
        bits = _number(quantization, "bits")
        if method == "fp8":
            return 1.0
        if quantization.get("load_in_4bit") or bits == 4:
            return 0.5
        if quantization.get("load_in_8bit") or bits == 8:
            return 1.0
    text = _text_config(config)
    dtype = str(text.get("torch_dtype") or text.get("dtype") or config.get("torch_dtype") or "")
    return _DTYPE_BYTES.get(dtype.removeprefix("torch."), 2.0)


def mount_of(path: str, mounts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The mount (an entry of ansible_facts['mounts']) that holds `path`: the longest
    mount point that is `path` or one of its parents; of two on the same point, the later
    one (it hides the other). {} when none does."""
    target = "/" + str(path).strip("/")
    best: dict[str, Any] = {}
    best_length = -1
    for mount in mounts:
        point = "/" + str(mount.get("mount", "")).strip("/")
        if point != "/" and target != point and not target.startswith(point + "/"):
            continue
        if len(point) >= best_length:
            best, best_length = dict(mount), len(point)
    return best


def ancestors(path: str) -> list[str]:
    """`path` and each directory above it, deepest first: /a/b, /a, /."""
    parts = [p for p in str(path).split("/") if p and p != "."]
    return ["/" + "/".join(parts[:n]) for n in range(len(parts), -1, -1)]


def df_mount(lines: Iterable[str]) -> dict[str, Any]:
    """The first mount `df -B1 --output=avail,target -- PATH...` reports, as an entry of
    ansible_facts['mounts'] ({mount, size_available}); {} when it reports none."""
    for line in lines:
        match = re.match(r"^\s*(\d+)\s+(\S.*?)\s*$", str(line))
        if match:
            return {"mount": match.group(2), "size_available": int(match.group(1))}
    return {}


def secure_boot(mokutil: Mapping[str, Any], efi_booted: bool, efi_variable: str) -> dict[str, Any]:
    """Whether Secure Boot is on, and what says so.

    mokutil: the result of `mokutil --sb-state` (rc, stdout), used when it answers;
    efi_booted: whether /sys/firmware/efi exists (no: legacy BIOS boot, no Secure Boot);
    efi_variable: the SecureBoot EFI variable read from efivarfs (slurp's base64, "" when
    absent): 4 bytes of attributes, then the value, 1 for on.
    """
    out = str(mokutil.get("stdout", "")) if isinstance(mokutil, Mapping) else ""
    if mokutil.get("rc") == 0 and "SecureBoot " in out:
        # "SecureBoot validation is disabled in shim": the kernel is told Secure Boot is off.
        enabled = "SecureBoot enabled" in out and "validation is disabled" not in out
        return {"enabled": enabled, "source": "mokutil --sb-state: " + " / ".join(out.split("\n"))}
    if not efi_booted:
        return {"enabled": False, "source": "legacy BIOS boot (no /sys/firmware/efi)"}
    if not efi_variable:
        return {"enabled": False, "source": "no SecureBoot EFI variable in efivarfs"}
    try:
        data = base64.b64decode(str(efi_variable))
    except ValueError:
        data = b""
    enabled = len(data) >= 5 and data[4] == 1
    return {
        "enabled": enabled,
        "source": f"SecureBoot EFI variable = {data[4] if len(data) >= 5 else '?'}",
    }


class FilterModule:
    """Filters of the gpu_preflight role."""

    def filters(self) -> dict[str, Any]:
        return {
            "gpu_preflight_nvidia_gpus": nvidia_gpus,
            "gpu_preflight_config_from_json": config_from_json,
            "gpu_preflight_count_parameters": model_parameters,
            "gpu_preflight_checkpoint_bytes": checkpoint_bytes_per_parameter,
            "gpu_preflight_mount_of": mount_of,
            "gpu_preflight_ancestors": ancestors,
            "gpu_preflight_df_mount": df_mount,
            "gpu_preflight_secure_boot": secure_boot,
        }

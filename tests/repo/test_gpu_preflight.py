"""The gpu_preflight role: its filters, and its rules on a faked host.

The filters are plain functions, checked here on known model shapes and on captured
sysfs, lspci, nvidia-smi and mokutil output. The role itself runs on this machine
(`ansible_connection: local`) with its facts replaced by those of a fake inference host
(release, architecture, RAM, mounts), its PCI devices by a fake sysfs tree under the
test's temporary directory, and its EFI variables by fake files: each rule is made to
fail once, with its message checked, and a good host passes without a change, in check
mode and out of it.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

from .conftest import ROOT
from .playbook_runner import run_playbook

ROLE = ROOT / "roles" / "gpu_preflight"
GIB = 1024**3


def load_filters() -> ModuleType:
    path = ROLE / "filter_plugins" / "gpu_preflight.py"
    spec = importlib.util.spec_from_file_location("gpu_preflight_filters", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


F = load_filters()

# Shapes from the models' published config.json files (the keys the count reads).
QWEN2_7B = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
QWEN2_0_5B = {
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_attention_heads": 14,
    "num_hidden_layers": 24,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
}
LLAMA3_8B = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
}
DEEPSEEK_V3 = {
    "model_type": "deepseek_v3",
    "hidden_size": 7168,
    "intermediate_size": 18432,
    "moe_intermediate_size": 2048,
    "n_routed_experts": 256,
    "n_shared_experts": 1,
    "first_k_dense_replace": 3,
    "moe_layer_freq": 1,
    "num_attention_heads": 128,
    "num_key_value_heads": 128,
    "num_hidden_layers": 61,
    "q_lora_rank": 1536,
    "kv_lora_rank": 512,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "vocab_size": 129280,
    "tie_word_embeddings": False,
    "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]},
}
DEEPSEEK_V2_LITE = {
    "model_type": "deepseek_v2",
    "hidden_size": 2048,
    "intermediate_size": 10944,
    "moe_intermediate_size": 1408,
    "n_routed_experts": 64,
    "n_shared_experts": 2,
    "first_k_dense_replace": 1,
    "moe_layer_freq": 1,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "num_hidden_layers": 27,
    "q_lora_rank": None,
    "kv_lora_rank": 512,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "vocab_size": 102400,
    "tie_word_embeddings": False,
}


@pytest.mark.parametrize(
    ("config", "published"),
    [
        (QWEN2_7B, 7.62e9),
        (QWEN2_0_5B, 0.494e9),
        (LLAMA3_8B, 8.03e9),
        (DEEPSEEK_V3, 671e9),
        (DEEPSEEK_V2_LITE, 15.7e9),
    ],
    ids=["qwen2-7b", "qwen2-0.5b-tied", "llama3-8b", "deepseek-v3", "deepseek-v2-lite"],
)
def test_parameter_count_matches_the_published_size(config: dict, published: float) -> None:
    assert F.model_parameters(config) == pytest.approx(published, rel=0.01)


def test_parameter_count_of_qwen2_7b_is_exact() -> None:
    # What transformers reports for Qwen2-7B (and DeepSeek-R1-Distill-Qwen-7B).
    assert F.model_parameters(QWEN2_7B) == 7_615_616_512


def test_tied_embeddings_count_once() -> None:
    untied = F.model_parameters({**QWEN2_0_5B, "tie_word_embeddings": False})
    assert untied - F.model_parameters(QWEN2_0_5B) == 151936 * 896


def test_nested_text_config_is_counted() -> None:
    assert F.model_parameters({"text_config": QWEN2_7B}) == F.model_parameters(QWEN2_7B)


@pytest.mark.parametrize(
    "config",
    [{}, {"hidden_size": 4096}, {**QWEN2_7B, "vocab_size": None}, "not a dict"],
    ids=["empty", "no-layers", "null-vocab", "not-a-dict"],
)
def test_parameter_count_is_zero_without_the_sizes(config: object) -> None:
    assert F.model_parameters(config) == 0


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (QWEN2_7B, 2.0),
        (LLAMA3_8B, 4.0),
        (DEEPSEEK_V3, 1.0),
        ({"dtype": "float16"}, 2.0),
        ({"quantization_config": {"quant_method": "awq", "bits": 4}}, 0.5),
        ({}, 2.0),
    ],
)
def test_checkpoint_bytes_per_parameter(config: dict, expected: float) -> None:
    assert F.checkpoint_bytes_per_parameter(config) == expected


SYSFS = [
    "/sys/bus/pci/devices/0000:00:1f.0/vendor:0x8086",
    "/sys/bus/pci/devices/0000:00:1f.0/class:0x060100",
    "/sys/bus/pci/devices/0000:00:1f.0/device:0x1234",
    # An H100 and its neighbour, an NVIDIA function that is not a display controller.
    "/sys/bus/pci/devices/0000:17:00.0/vendor:0x10de",
    "/sys/bus/pci/devices/0000:17:00.0/class:0x030200",
    "/sys/bus/pci/devices/0000:17:00.0/device:0x2330",
    "/sys/bus/pci/devices/0000:17:00.1/vendor:0x10de",
    "/sys/bus/pci/devices/0000:17:00.1/class:0x040300",
    "/sys/bus/pci/devices/0000:17:00.1/device:0x22ba",
    "/sys/bus/pci/devices/0000:2a:00.0/vendor:0x10de",
    "/sys/bus/pci/devices/0000:2a:00.0/class:0x030000",
    "/sys/bus/pci/devices/0000:2a:00.0/device:0x26b9",
]
LSPCI = [
    '0000:17:00.0 "3D controller" "NVIDIA Corporation" "GH100 [H100 SXM5 80GB]" -ra1 '
    '"NVIDIA Corporation" "GH100 [H100 SXM5 80GB]"',
]
NVIDIA_SMI = [
    "00000000:17:00.0, NVIDIA H100 80GB HBM3, 81559",
    "00000000:2A:00.0, NVIDIA L40S, 46068",
]


def test_gpus_come_from_sysfs_and_are_named_by_lspci_then_nvidia_smi() -> None:
    gpus = F.nvidia_gpus(SYSFS, LSPCI, NVIDIA_SMI)
    assert [(g["address"], g["pci_id"], g["name"], g["memory_mib"]) for g in gpus] == [
        ("0000:17:00.0", "10de:2330", "GH100 [H100 SXM5 80GB]", 81559),
        ("0000:2a:00.0", "10de:26b9", "NVIDIA L40S", 46068),
    ]
    assert {g["memory_source"] for g in gpus} == {"nvidia-smi"}


def test_gpus_without_lspci_or_nvidia_smi_are_named_by_pci_id_with_the_inventory_memory() -> None:
    gpus = F.nvidia_gpus(SYSFS, [], [], 24564)
    assert [(g["name"], g["memory_mib"], g["memory_source"]) for g in gpus] == [
        ("10de:2330", 24564, "gpu_preflight_gpu_memory_mib"),
        ("10de:26b9", 24564, "gpu_preflight_gpu_memory_mib"),
    ]
    assert F.nvidia_gpus(SYSFS[:3], LSPCI, NVIDIA_SMI) == []


def test_mount_is_the_longest_prefix() -> None:
    mounts = [
        {"mount": "/", "size_available": 1},
        {"mount": "/var/lib", "size_available": 2},
        {"mount": "/var/lib2", "size_available": 3},
        {"mount": "/var/lib/llmserve/models/x", "size_available": 4},
    ]
    assert F.mount_of("/var/lib/llmserve/models/q", mounts)["size_available"] == 2
    assert F.mount_of("/var/lib", mounts)["size_available"] == 2
    assert F.mount_of("/var/lib2/m", mounts)["size_available"] == 3
    assert F.mount_of("/opt/m", mounts)["size_available"] == 1
    assert F.mount_of("/opt/m", mounts[1:]) == {}
    # Of two mounts on one point, the later hides the earlier.
    assert (
        F.mount_of("/var/lib/m", [*mounts, {"mount": "/var/lib/", "size_available": 5}])[
            "size_available"
        ]
        == 5
    )


def test_ancestors_deepest_first() -> None:
    assert F.ancestors("/var/lib/llmserve/models/m/") == [
        "/var/lib/llmserve/models/m",
        "/var/lib/llmserve/models",
        "/var/lib/llmserve",
        "/var/lib",
        "/var",
        "/",
    ]
    assert F.ancestors("/") == ["/"]


def test_df_mount_is_the_first_reported() -> None:
    lines = ["        Avail Mounted on", "3408511320064 /var/lib/llm models", "82079408128 /"]
    assert F.df_mount(lines) == {"mount": "/var/lib/llm models", "size_available": 3408511320064}
    assert F.df_mount(["df: /x: No such file or directory"]) == {}


def test_config_from_json() -> None:
    assert F.config_from_json(json.dumps(QWEN2_7B)) == QWEN2_7B
    assert F.JSON_ERROR in F.config_from_json("")
    assert F.JSON_ERROR in F.config_from_json("[1, 2]")


def efi_variable(value: int) -> str:
    return base64.b64encode(bytes([6, 0, 0, 0, value])).decode()


@pytest.mark.parametrize(
    ("mokutil", "efi", "variable", "enabled"),
    [
        ({"rc": 0, "stdout": "SecureBoot enabled"}, True, "", True),
        ({"rc": 0, "stdout": "SecureBoot disabled"}, True, efi_variable(1), False),
        (
            {"rc": 0, "stdout": "SecureBoot enabled\nSecureBoot validation is disabled in shim"},
            True,
            "",
            False,
        ),
        ({"rc": 2, "stdout": ""}, False, "", False),
        ({"rc": 1, "stdout": "EFI variables are not supported on this system"}, True, "", False),
        ({"rc": 2, "stdout": ""}, True, efi_variable(1), True),
        ({"rc": 2, "stdout": ""}, True, efi_variable(0), False),
    ],
    ids=["mokutil-on", "mokutil-off", "shim-validation-off", "legacy", "no-var", "var-1", "var-0"],
)
def test_secure_boot_state(mokutil: dict, efi: bool, variable: str, enabled: bool) -> None:
    assert F.secure_boot(mokutil, efi, variable)["enabled"] is enabled


# --- the role on faked hosts ------------------------------------------------------------
# Every scenario is a host of one inventory (all of them this machine), so that one run
# covers them all. Facts come from a set_fact of each host's `fake`; the paths the role
# reads from sysfs are each host's own fake tree.

PLAYBOOK = """
- name: Preflight
  hosts: all
  gather_facts: false
  pre_tasks:
    - name: Pretend to be an inference host
      ansible.builtin.set_fact:
        ansible_distribution: "{{ fake.distribution }}"
        ansible_distribution_version: "{{ fake.version }}"
        ansible_distribution_major_version: "{{ fake.version.split('.')[0] }}"
        ansible_architecture: "{{ fake.architecture }}"
        ansible_memtotal_mb: "{{ fake.memtotal_mb }}"
        cacheable: true

    - name: Point the role at fake EFI firmware
      ansible.builtin.set_fact:
        __gpu_preflight_efi_dir: "{{ efi_dir }}"
        __gpu_preflight_efi_secure_boot_variable: >-
          {{ efi_dir }}/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c
  roles:
    - role: gpu_preflight
"""

DEBIAN = {
    "distribution": "Debian",
    "version": "12.8",
    "architecture": "x86_64",
    "memtotal_mb": 64 * 1024,
}
# More room than any disk here has: 3e9 bytes of weights x 1e6.
NO_ROOM = {"gpu_preflight_disk_headroom": 1e6}
UBUNTU_2404 = {**DEBIAN, "distribution": "Ubuntu", "version": "24.04"}
GOOD = {"gpu_preflight_model_parameters": 1_500_000_000, "gpu_preflight_gpu_memory_mib": 81559}
# 64 GB of weights: these hosts test the GPU rule, whatever this machine's disk holds.
BIG = {
    "gpu_preflight_model_parameters": 32_000_000_000,
    "gpu_preflight_gpu_memory_mib": 46068,
    "gpu_preflight_min_memory_mb": 1,
    "gpu_preflight_check_disk": False,
}

# name: (host variables, GPUs in its PCI tree, Secure Boot in its EFI variable or None
# for legacy boot, config.json in its model directory or None).
SCENARIOS: dict[str, tuple[dict, int, int | None, dict | None]] = {
    "good": (GOOD, 2, None, None),
    "no-gpu": (GOOD, 0, None, None),
    "lab": ({"gpu_preflight_gpu_count": 0, "gpu_preflight_model_source": "tiny"}, 0, None, None),
    "old-release": (
        {"fake": {**DEBIAN, "distribution": "Ubuntu", "version": "20.04"}},
        2,
        None,
        None,
    ),
    "ppc": ({**GOOD, "fake": {**DEBIAN, "architecture": "ppc64le"}}, 2, None, None),
    "wrong-model": ({**GOOD, "gpu_preflight_gpu_models": ["H200", "L40S"]}, 2, None, None),
    "right-model": ({**GOOD, "gpu_preflight_gpu_models": ["H200", "^10de:2330$"]}, 2, None, None),
    "host-config": ({"gpu_preflight_gpu_memory_mib": 81559}, 2, None, QWEN2_7B),
    "controller-config": ({"gpu_preflight_gpu_memory_mib": 81559}, 2, None, None),
    "unknown-size": ({"gpu_preflight_gpu_memory_mib": 81559}, 2, None, None),
    "small-ram": ({**GOOD, "fake": {**DEBIAN, "memtotal_mb": 4096}}, 2, None, None),
    "small-disk": ({**GOOD, **NO_ROOM}, 2, None, None),
    "small-disk-model-there": ({**GOOD, **NO_ROOM}, 2, None, {}),
    "secure-boot": (GOOD, 2, 1, None),
    "secure-boot-off": (GOOD, 2, 0, None),
    "secure-boot-enrolled": ({**GOOD, "gpu_preflight_dkms_signing_key_enrolled": True}, 2, 1, None),
    "secure-boot-ubuntu": ({**GOOD, "fake": UBUNTU_2404}, 2, 1, None),
    "memory-unknown": ({"gpu_preflight_model_parameters": 1_500_000_000}, 2, None, None),
    "too-big": (BIG, 2, None, None),
    "too-big-int4": ({**BIG, "gpu_preflight_precision": "int4"}, 2, None, None),
}


def fake_pci(root: Path, gpus: int) -> Path:
    """A sysfs-like tree: `gpus` H100s and a bridge that is not NVIDIA."""
    devices = root / "pci"
    entries = [(f"0000:{0x17 + i:02x}:00.0", "0x10de", "0x2330", "0x030200") for i in range(gpus)]
    entries.append(("0000:00:1f.0", "0x8086", "0x1234", "0x060100"))
    for address, vendor, device, klass in entries:
        d = devices / address
        d.mkdir(parents=True)
        for name, value in (("vendor", vendor), ("device", device), ("class", klass)):
            (d / name).write_text(value + "\n", encoding="ascii")
    return devices


def fake_host(root: Path, name: str) -> dict[str, object]:
    """The host variables of scenario `name`, its files made under root/name."""
    variables, gpus, secure_boot, config = SCENARIOS[name]
    base = root / name
    model = base / "models" / "m"
    if config is not None:
        model.mkdir(parents=True)
        (model / "config.json").write_text(json.dumps(config), encoding="utf-8")
    efi = base / "efi"
    if secure_boot is not None:
        (efi / "efivars").mkdir(parents=True)
        variable = efi / "efivars" / "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
        variable.write_bytes(bytes([6, 0, 0, 0, secure_boot]))
    host: dict[str, object] = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "fake": DEBIAN,
        "efi_dir": str(efi),
        "gpu_preflight_pci_devices_path": str(fake_pci(base, gpus)),
        "gpu_preflight_model_dir": str(model),
        **variables,
    }
    if name == "controller-config":
        controller = base / "controller"
        controller.mkdir()
        (controller / "config.json").write_text(json.dumps(DEEPSEEK_V2_LITE), encoding="utf-8")
        host["llmserve_model_src"] = f"{controller}/"
    return host


class Run:
    """One run of the role over some scenarios: each host's failure or summary line."""

    def __init__(self, root: Path, names: list[str], check: bool) -> None:
        root.mkdir(parents=True)
        hosts = {name: fake_host(root, name) for name in names}
        inventory = root / "hosts.yml"
        inventory.write_text(json.dumps({"all": {"hosts": hosts}}), encoding="utf-8")
        playbook = root / "play.yml"
        playbook.write_text(PLAYBOOK, encoding="utf-8")
        self.result = run_playbook(
            root / "runner",
            playbook,
            inventory=inventory,
            cmdline=["--check"] if check else [],
            # Facts only through ansible_facts; results as JSON, for the summary lines.
            envvars={
                "ANSIBLE_INJECT_FACT_VARS": "False",
                "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
            },
        )

    def failure(self, host: str) -> tuple[str, str]:
        failed = [r for r in self.result.failed if r.host == host]
        assert len(failed) == 1, f"{host}: {failed or 'no failure'}\n{self.result.tail()}"
        return failed[0].task, failed[0].msg

    def summary(self, host: str) -> str:
        failed = [(r.task, r.msg) for r in self.result.failed if r.host == host]
        assert not failed, f"{host}: {failed}"
        prefix = f'"msg": "{host}: '
        lines = [x.strip() for x in self.result.stdout.splitlines() if x.strip().startswith(prefix)]
        assert len(lines) == 1, f"{host}: {lines}\n{self.result.tail()}"
        return json.loads("{" + lines[0] + "}")["msg"]


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Every scenario, in check mode."""
    return Run(tmp_path_factory.mktemp("gpu-preflight") / "check", list(SCENARIOS), check=True)


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The good host and the host without a GPU, out of check mode."""
    return Run(tmp_path_factory.mktemp("gpu-preflight") / "run", ["good", "no-gpu"], check=False)


# The free space is this machine's, as df reports it.
GOOD_SUMMARY = re.compile(
    r"good: Debian 12\.8 x86_64, 2 x 10de:2330 \(81559 MiB each\), 64\.0 GiB RAM, "
    r"[0-9.]+ [KMGTP]?i?B free on /\S*, Secure Boot off; "
    r"model 1\.5e9 params bf16 = 3\.0 GB, needs 3\.7 GB on one GPU: OK"
)


def test_nothing_changes(checked: Run, applied: Run) -> None:
    assert checked.result.changed == [], checked.result.changed
    assert applied.result.changed == [], applied.result.changed


def test_a_good_host_passes(checked: Run, applied: Run) -> None:
    assert GOOD_SUMMARY.fullmatch(checked.summary("good")), checked.summary("good")
    assert GOOD_SUMMARY.fullmatch(applied.summary("good")), applied.summary("good")


def test_a_host_without_gpu_is_refused(checked: Run, applied: Run) -> None:
    for run in (checked, applied):
        task, msg = run.failure("no-gpu")
        assert task == "Check the number of NVIDIA GPUs"
        assert msg.startswith("no-gpu: found 0 NVIDIA GPUs (PCI vendor 10de) under /"), msg
        assert msg.endswith("/no-gpu/pci; required at least 1 (gpu_preflight_gpu_count)."), msg


def test_a_lab_host_without_gpu_may_pass(checked: Run) -> None:
    line = checked.summary("lab")
    assert ", no NVIDIA GPU, " in line, line


@pytest.mark.parametrize(
    ("host", "task", "message"),
    [
        (
            "old-release",
            "Check the release",
            "old-release: runs Ubuntu 20.04; required one of Ubuntu 22.04, Ubuntu 24.04, "
            "Debian 12 (gpu_preflight_supported_os). Ubuntu 20.04 ships a Python older than "
            "3.10, and the service needs Python >= 3.10.",
        ),
        (
            "ppc",
            "Check the architecture",
            "ppc: architecture ppc64le; required one of x86_64, aarch64 "
            "(gpu_preflight_architectures).",
        ),
        (
            "wrong-model",
            "Check the GPU models",
            'wrong-model: 2 of 2 GPUs match none of ["H200", "L40S"] (gpu_preflight_gpu_models): '
            "0000:17:00.0 10de:2330; 0000:18:00.0 10de:2330.",
        ),
    ],
)
def test_a_rule_refuses_with_its_message(checked: Run, host: str, task: str, message: str) -> None:
    assert checked.failure(host) == (task, message)


def test_a_matching_gpu_model_passes(checked: Run) -> None:
    checked.summary("right-model")


def test_size_from_the_hosts_config_json(checked: Run) -> None:
    line = checked.summary("host-config")
    assert line.endswith("model 7.6e9 params bf16 = 15.2 GB, needs 18.6 GB on one GPU: OK"), line


def test_size_from_the_controllers_config_json(checked: Run) -> None:
    line = checked.summary("controller-config")
    assert "model 1.6e10 params bf16 = 31.4 GB, needs 38.4 GB on one GPU" in line, line


def test_unknown_size_names_the_variable(checked: Run) -> None:
    task, msg = checked.failure("unknown-size")
    assert task == "Check that the model's size is known"
    assert "no config.json in " in msg and "gpu_preflight_model_config is empty" in msg, msg
    assert "Required: gpu_preflight_model_parameters" in msg, msg


def test_host_memory_is_checked(checked: Run) -> None:
    task, msg = checked.failure("small-ram")
    assert task == "Check the host memory"
    # 1.5e9 bf16 weights (3e9 bytes, 2862 MiB) plus 4096 MiB.
    assert msg.startswith("small-ram: 4096 MiB of RAM; required at least 6958 MiB"), msg


def test_disk_is_checked_unless_the_model_is_there(checked: Run) -> None:
    task, msg = checked.failure("small-disk")
    assert task == "Check the free disk space for the model"
    assert re.fullmatch(
        r"small-disk: [0-9.]+ [KMGTP]?i?B free on /\S* \(which holds /\S+/small-disk/models/m\); "
        r"required 2\.7 PiB for the model \(2\.8 GiB in its files x gpu_preflight_disk_headroom "
        r"1000000\.0\)\.",
        msg,
    ), msg
    checked.summary("small-disk-model-there")


@pytest.mark.skipif(shutil.which("mokutil") is not None, reason="mokutil answers for this machine")
def test_secure_boot_needs_an_enrolled_key_for_dkms(checked: Run) -> None:
    task, msg = checked.failure("secure-boot")
    assert task == "Check that the NVIDIA kernel module can load under Secure Boot"
    assert msg.startswith(
        "secure-boot: Secure Boot is on (SecureBoot EFI variable = 1) and on Debian 12.8 DKMS"
    ), msg
    assert "gpu_preflight_dkms_signing_key_enrolled: true" in msg
    assert "Secure Boot off" in checked.summary("secure-boot-off")
    assert "Secure Boot on" in checked.summary("secure-boot-enrolled")
    # Ubuntu's signed prebuilt module needs no DKMS (vars/Ubuntu-24.yml).
    assert "Secure Boot on" in checked.summary("secure-boot-ubuntu")


def test_gpu_memory_must_be_known(checked: Run) -> None:
    task, msg = checked.failure("memory-unknown")
    assert task == "Check that the GPU memory is known"
    assert "is unknown: nvidia-smi " in msg and "gpu_preflight_gpu_memory_mib set" in msg, msg


def test_the_model_must_fit_on_one_gpu(checked: Run) -> None:
    task, msg = checked.failure("too-big")
    assert task == "Check that the model fits on one GPU"
    assert msg.startswith(
        "too-big: the model needs 78.2 GB on one GPU (3.2e10 parameters x 2 bytes (bf16) = 64.0 GB,"
    ), msg
    assert "0000:17:00.0 (10de:2330), has 46068 MiB (gpu_preflight_gpu_memory_mib)" in msg, msg
    assert "needs 19.6 GB on one GPU" in checked.summary("too-big-int4")

"""Write the intersphinx inventories the docs link into, so the build needs no network.

The docs are built offline (``sphinx-build -W`` in CI has no internet), so the ``objects.inv``
files of numpy, torch, transformers, peft and Python cannot be downloaded at build time.
This script writes, with sphobjinv, an inventory per project holding the objects these docs
and ttdecomp's docstrings refer to, at the addresses of each project's published docs.
Rerun it (``pip install sphobjinv; python docs/_inv/make_inventories.py``) after adding a
cross-reference to an object not listed here.
"""

from __future__ import annotations

from pathlib import Path

import sphobjinv as soi

HERE = Path(__file__).resolve().parent

# project -> (version, [(name, domain:role, uri)]); "$" in a uri stands for the name
OBJECTS: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    "python": (
        "3",
        [
            *[(n, "py:class", "library/functions.html#$") for n in ("int", "float", "str")],
            *[(n, "py:class", "library/stdtypes.html#$") for n in ("list", "tuple", "dict")],
            ("bool", "py:class", "library/functions.html#bool"),
            *[
                (n, "py:exception", "library/exceptions.html#$")
                for n in ("ValueError", "TypeError", "Exception", "UserWarning", "OSError")
            ],
            ("pathlib.Path", "py:class", "library/pathlib.html#$"),
            ("os.PathLike", "py:class", "library/os.html#$"),
            ("argparse.ArgumentParser", "py:class", "library/argparse.html#$"),
            ("dataclasses.dataclass", "py:function", "library/dataclasses.html#$"),
            ("warnings.warn", "py:function", "library/warnings.html#$"),
        ],
    ),
    "numpy": (
        "2",
        [
            ("numpy.ndarray", "py:class", "reference/generated/numpy.ndarray.html#$"),
            ("numpy.dtype", "py:class", "reference/generated/numpy.dtype.html#$"),
            ("numpy.linalg.svd", "py:function", "reference/generated/numpy.linalg.svd.html#$"),
            ("numpy.linalg.norm", "py:function", "reference/generated/numpy.linalg.norm.html#$"),
            ("numpy.einsum", "py:function", "reference/generated/numpy.einsum.html#$"),
            ("numpy.random.default_rng", "py:function", "reference/random/generator.html#$"),
        ],
    ),
    "torch": (
        "2",
        [
            ("torch.Tensor", "py:class", "tensors.html#$"),
            ("torch.dtype", "py:class", "tensor_attributes.html#$"),
            ("torch.device", "py:class", "tensor_attributes.html#$"),
            ("torch.nn.Module", "py:class", "generated/torch.nn.Module.html#$"),
            ("torch.nn.Linear", "py:class", "generated/torch.nn.Linear.html#$"),
            ("torch.nn.Parameter", "py:class", "generated/torch.nn.parameter.Parameter.html#$"),
            ("torch.autograd.Function", "py:class", "autograd.html#$"),
            ("torch.autocast", "py:class", "amp.html#$"),
            ("torch.linalg.svd", "py:function", "generated/torch.linalg.svd.html#$"),
            ("torch.utils.checkpoint.checkpoint", "py:function", "checkpoint.html#$"),
            (
                "torch.nn.parallel.DistributedDataParallel",
                "py:class",
                "generated/torch.nn.parallel.DistributedDataParallel.html#$",
            ),
            ("torch.distributed.fsdp.FullyShardedDataParallel", "py:class", "fsdp.html#$"),
            ("torch.set_num_threads", "py:function", "generated/torch.set_num_threads.html#$"),
        ],
    ),
    "transformers": (
        "5",
        [
            ("transformers.Trainer", "py:class", "main_classes/trainer#$"),
            ("transformers.TrainingArguments", "py:class", "main_classes/trainer#$"),
            ("transformers.PreTrainedModel", "py:class", "main_classes/model#$"),
            (
                "transformers.PreTrainedModel.gradient_checkpointing_enable",
                "py:method",
                "main_classes/model#$",
            ),
            ("transformers.AutoModelForSequenceClassification", "py:class", "model_doc/auto#$"),
            ("transformers.AutoModelForCausalLM", "py:class", "model_doc/auto#$"),
            ("transformers.AutoTokenizer", "py:class", "model_doc/auto#$"),
            ("transformers.LlamaConfig", "py:class", "model_doc/llama#$"),
            ("transformers.LlamaForCausalLM", "py:class", "model_doc/llama#$"),
            ("transformers.BertModel", "py:class", "model_doc/bert#$"),
            ("transformers.GPT2Model", "py:class", "model_doc/gpt2#$"),
            ("transformers.Conv1D", "py:class", "internal/modeling_utils#$"),
        ],
    ),
    "peft": (
        "0",
        [
            ("peft.LoraConfig", "py:class", "package_reference/lora#$"),
            ("peft.LoraModel", "py:class", "package_reference/lora#$"),
            ("peft.LoraModel.merge_and_unload", "py:method", "package_reference/lora#$"),
            ("peft.PeftModel", "py:class", "package_reference/peft_model#$"),
            ("peft.PeftModel.from_pretrained", "py:method", "package_reference/peft_model#$"),
            ("peft.get_peft_model", "py:function", "package_reference/peft_model#$"),
        ],
    ),
}


def main() -> None:
    for project, (version, objects) in OBJECTS.items():
        inv = soi.Inventory()
        inv.project, inv.version = project, version
        for name, role, uri in objects:
            domain, role = role.split(":")
            inv.objects.append(
                soi.DataObjStr(
                    name=name, domain=domain, role=role, priority="1", uri=uri, dispname="-"
                )
            )
        path = HERE / f"{project}.inv"
        soi.writebytes(path, soi.compress(inv.data_file(contract=True)))
        print(f"{path.name}: {len(objects)} objects")


if __name__ == "__main__":
    main()

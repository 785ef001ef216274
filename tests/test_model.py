"""Architectures build, train a step, and round-trip through the model file format."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from napari_metseg.errors import ModelFileError
from napari_metseg.model import (
    Features,
    ModelConfig,
    build_model,
    load_model,
    read_model_config,
    save_model,
)
from napari_metseg.preprocess import PreprocessConfig

pytestmark = pytest.mark.usefixtures("one_thread")


SMALL = PreprocessConfig(size=32, context=1)
#: Two sequences keep the per-sequence variants small (the subtraction pair).
PAIR = ("cube_pre", "cube_post")
VARIANTS = [
    ("input", "shared"),
    ("mid", "shared"),
    ("mid", "independent"),
    ("mid", "l2_tied"),
    ("end", "shared"),
    ("end", "l2_tied"),
    ("subtraction", "shared"),
]


@pytest.mark.parametrize(("integration", "sharing"), VARIANTS)
def test_variant_forward_backward_and_file_round_trip(integration, sharing, tmp_path) -> None:
    torch.manual_seed(0)
    config = ModelConfig(sequences=PAIR, integration=integration, sharing=sharing, preprocess=SMALL)
    model = build_model(config)
    x = torch.randn(2, config.in_channels, 32, 32)
    assert config.in_channels == 6
    logits = model(x)
    assert logits.shape == (2, 2, 32, 32)
    logits.logsumexp(dim=1).mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())

    path = save_model(model, tmp_path / "model", {"note": "test"})
    loaded = load_model(path)
    assert loaded.config == config and loaded.metadata["note"] == "test"
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


@pytest.mark.parametrize("decoder", ["none", "plus"])
@pytest.mark.parametrize(("integration", "sharing"), VARIANTS)
def test_forward_is_decode_of_context_of_features(integration, sharing, decoder) -> None:
    torch.manual_seed(0)
    config = ModelConfig(
        sequences=PAIR, integration=integration, sharing=sharing, decoder=decoder, preprocess=SMALL
    )
    model = build_model(config).eval()
    x = torch.randn(3, config.in_channels, 40, 48)
    with torch.no_grad():
        features = model.features(x)
        context = model.context(features)
        torch.testing.assert_close(model.decode(context), model(x), rtol=0, atol=0)
        assert features.size == context.size == (40, 48)
        assert (features.low is not None) == (decoder == "plus")
        # what a fine-tuning cache does: chunks joined, draws stacked, a sub-batch picked
        chunks = Features.cat([model.context(model.features(part)) for part in (x[:2], x[2:])])
        stacked = Features.stack([chunks, context])
        torch.testing.assert_close(
            model.decode(stacked[torch.tensor([1, 0]), torch.tensor([2, 0])]),
            model(x)[torch.tensor([2, 0])],
        )
        # the layers after context are pointwise: decode_cells runs on any gathered cells
        cells = model.decode_cells(context)
        assert cells.shape[-2:] == context.out.shape[-2:]
        batch, row, col = torch.tensor([2, 0, 2]), torch.tensor([1, 0, 0]), torch.tensor([0, 1, 1])
        gathered = Features(context.out[batch, ..., row, col][..., None, None], None, (1, 1))
        torch.testing.assert_close(
            model.decode_cells(gathered)[..., 0, 0], cells[batch, :, row, col]
        )


@pytest.mark.parametrize("decoder", ["none", "plus"])
@pytest.mark.parametrize(("integration", "sharing"), VARIANTS)
def test_decoder_parameters_are_exactly_those_downstream_of_context(
    integration, sharing, decoder
) -> None:
    config = ModelConfig(
        sequences=PAIR, integration=integration, sharing=sharing, decoder=decoder, preprocess=SMALL
    )
    model = build_model(config).train()
    x = torch.randn(2, config.in_channels, 32, 32)
    context = model.context(model.features(x))
    loss = model.decode(Features(context.out.detach(), _detach(context.low), context.size))
    loss.logsumexp(dim=1).mean().backward()
    reached = {id(p) for p in model.parameters() if p.grad is not None}
    assert reached == {id(p) for p in model.decoder_parameters()}
    model.zero_grad(set_to_none=True)
    context.out.sum().backward()
    assert not reached & {id(p) for p in model.parameters() if p.grad is not None}


def _detach(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach()


def test_model_file_loads_under_its_old_tensor_names(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    model = build_model(ModelConfig(backbone="light", preprocess=SMALL))
    folder = save_model(model, tmp_path / "model")
    stored = load_file(folder / "model.safetensors")
    # Files written before the rename name the ASPP head "head." (the earlier bundled model).
    renamed = {name.replace("classifier.", "head.", 1): t for name, t in stored.items()}
    save_file(renamed, folder / "model.safetensors")
    loaded = load_model(folder).classifier.state_dict()
    head = {name[len("head.") :]: t for name, t in renamed.items() if name.startswith("head.")}
    assert head and set(loaded) == set(head)
    for name, tensor in head.items():
        torch.testing.assert_close(loaded[name], tensor.to(loaded[name].dtype))


@pytest.mark.parametrize("decoder", ["none", "plus"])
def test_head_channels_set_the_width_of_the_head_and_travel_with_the_file(
    tmp_path, decoder
) -> None:
    config = ModelConfig(backbone="light", decoder=decoder, head_channels=24, preprocess=SMALL)
    model = build_model(config).eval()
    widths = {m.out_channels for m in model.classifier.modules() if isinstance(m, torch.nn.Conv2d)}
    # plus: the stride-4 features reduced to 48, and the depthwise pass over both joined (72)
    assert widths == {24, 2} | ({48, 72} if decoder == "plus" else set())
    with torch.no_grad():
        assert model(torch.rand(1, config.in_channels, 32, 32)).shape == (1, 2, 32, 32)
    assert read_model_config(save_model(model, tmp_path / "model")).head_channels == 24
    written_before = {k: v for k, v in config.to_dict().items() if k != "head_channels"}
    assert ModelConfig.from_dict(written_before).head_channels == 256  # the method's width
    with pytest.raises(ValueError, match="head_channels"):
        ModelConfig(head_channels=0)


def test_input_level_uses_torchvision_resnet50_with_20_channels() -> None:
    model = build_model(ModelConfig(backbone="resnet50"))
    assert model.backbone.conv1.in_channels == 20
    assert model.config.in_channels == 20 and model.config.slices_per_sequence == 5


def test_shared_branches_share_parameters_and_independent_do_not() -> None:
    shared = build_model(ModelConfig(integration="mid", sharing="shared", preprocess=SMALL))
    independent = build_model(
        ModelConfig(integration="mid", sharing="independent", preprocess=SMALL)
    )
    assert len(shared.branches) == 1
    assert len(independent.branches) == 4
    first, second = independent.branches[0], independent.branches[1]
    assert first["0"][0].weight.data_ptr() != second["0"][0].weight.data_ptr()
    # A shared branch sees every sequence: its first convolution gets gradient from each.
    x = torch.zeros(2, shared.config.in_channels, 32, 32)
    x[:, 3:6] = torch.randn(2, 3, 32, 32)  # cube_pre only
    shared(x).logsumexp(dim=1).mean().backward()
    assert shared.branches[0]["0"][0].weight.grad.abs().sum() > 0
    # The ASPP head reads the four sequences' features side by side.
    assert shared.classifier[0].convs[0][0].in_channels == 4 * 960


def test_output_stride_changes_resolution_not_parameters() -> None:
    torch.manual_seed(0)
    coarse = build_model(ModelConfig(preprocess=SMALL))
    fine = build_model(ModelConfig(output_stride=8, preprocess=SMALL))
    assert coarse.config.output_stride == 16 and fine.config.output_stride == 8
    fine.load_state_dict(coarse.state_dict())  # same names and shapes
    x = torch.randn(1, coarse.config.in_channels, 64, 64)
    assert coarse.backbone(x)["out"].shape[-2:] == (4, 4)
    assert fine.backbone(x)["out"].shape[-2:] == (8, 8)
    assert fine.eval()(x).shape == (1, 2, 64, 64)
    assert ModelConfig(backbone="resnet50").output_stride == 8
    with pytest.raises(ValueError, match="output_stride"):
        ModelConfig(backbone="resnet50", output_stride=16)


def test_l2_tied_penalty_is_zero_at_start_and_grows_when_branches_diverge() -> None:
    model = build_model(ModelConfig(integration="end", sharing="l2_tied", preprocess=SMALL))
    assert float(model.tied_penalty().detach()) == 0.0
    with torch.no_grad():
        next(model.branches[1].parameters()).add_(0.5)
    assert float(model.tied_penalty().detach()) > 0.0
    assert float(build_model(ModelConfig(preprocess=SMALL)).tied_penalty()) == 0.0


def test_single_file_form_in_half_precision(tmp_path) -> None:
    model = build_model(ModelConfig(preprocess=SMALL))
    path = save_model(model, tmp_path / "m.safetensors", dtype=torch.float16)
    assert read_model_config(path) == model.config
    loaded = load_model(path)
    assert next(loaded.parameters()).dtype == torch.float32
    reference = model.state_dict()["classifier.0.convs.0.0.weight"]
    torch.testing.assert_close(
        loaded.state_dict()["classifier.0.convs.0.0.weight"], reference.half().float()
    )


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="backbone"):
        ModelConfig(backbone="vgg")
    with pytest.raises(ValueError, match="subtraction"):
        ModelConfig(integration="subtraction", sequences=("bravo", "flair"))
    assert ModelConfig(backbone="light").backbone == "mobilenet_v3_large"
    config = ModelConfig(sequences=("cube_pre", "cube_post"), preprocess=SMALL)
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_bad_model_files_raise_model_file_errors(tmp_path) -> None:
    model = build_model(ModelConfig(preprocess=SMALL))
    folder = save_model(model, tmp_path / "model")

    with pytest.raises(ModelFileError, match="no model"):
        load_model(tmp_path / "nothing")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text((folder / "config.json").read_text())
    (corrupt / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(ModelFileError, match="corrupt"):
        load_model(corrupt)
    mismatch = json.loads((folder / "config.json").read_text())
    mismatch["model"]["sequences"] = ["bravo", "flair"]
    (folder / "config.json").write_text(json.dumps(mismatch))
    with pytest.raises(ModelFileError, match="do not match"):
        load_model(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="unreadable"):
        load_model(folder)
    not_ours = tmp_path / "plain.safetensors"
    not_ours.write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ModelFileError, match="not a napari-metseg model"):
        load_model(not_ours)


def _residual_scales(model: torch.nn.Module) -> list[torch.Tensor]:
    """The batch-norm scale closing each residual branch of the backbone."""
    from napari_metseg.model.backbones import Bottleneck, InvertedResidual

    scales = []
    for block in model.modules():
        if isinstance(block, Bottleneck):
            scales.append(block.bn3.weight)
        elif isinstance(block, InvertedResidual) and block.use_res_connect:
            norms = [m for m in block.block.modules() if isinstance(m, torch.nn.BatchNorm2d)]
            scales.append(norms[-1].weight)
    return scales


@pytest.mark.parametrize(("backbone", "blocks"), [("resnet50", 16), ("light", 10)])
def test_residual_branches_start_at_zero_so_blocks_start_as_identities(backbone, blocks) -> None:
    model = build_model(ModelConfig(backbone=backbone, preprocess=PreprocessConfig(size=32)))
    scales = _residual_scales(model)
    assert len(scales) == blocks and all(torch.count_nonzero(s) == 0 for s in scales)
    # the blocks are identities; the rest of the network still sees the input
    with torch.no_grad():
        a, b = model(torch.rand(2, 20, 32, 32))
    assert a.shape == (2, 32, 32) and not torch.allclose(a, b)


@pytest.mark.parametrize("backbone", ["resnet50", "mobilenet_v3_large"])
def test_backbones_and_head_equal_torchvision_in_names_shapes_and_outputs(backbone) -> None:
    # torch-only rebuilds (no torchvision import at run time) must read and compute like it
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large, deeplabv3_resnet50

    from napari_metseg.model.aspp import DeepLabHead
    from napari_metseg.model.backbones import mobilenet_v3_large, resnet50

    build = deeplabv3_resnet50 if backbone == "resnet50" else deeplabv3_mobilenet_v3_large
    reference = build(weights=None, weights_backbone=None, num_classes=2)
    first = "layer1" if backbone == "resnet50" else "3"  # the DeepLabv3+ stride-4 features
    ours = resnet50(3) if backbone == "resnet50" else mobilenet_v3_large(3)
    ours.return_layers[first] = "low"
    reference.backbone.return_layers[first] = "low"
    head = DeepLabHead(reference.classifier[0].convs[0][0].in_channels, 2)
    for mine, theirs in ((ours, reference.backbone), (head, reference.classifier)):
        expected = theirs.state_dict()
        assert {k: v.shape for k, v in mine.state_dict().items()} == {
            k: v.shape for k, v in expected.items()
        }
        for value in expected.values():  # non-trivial statistics and scales
            if value.is_floating_point():
                value.uniform_(0.5, 1.5)
        mine.load_state_dict(expected)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        for mode in (False, True):
            ours.train(mode), head.train(mode), reference.train(mode)
            torch.manual_seed(0)
            got = ours(x)
            torch.manual_seed(0)
            want = reference.backbone(x)
            assert got.keys() == want.keys()
            for key in want:
                torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5)
        head.eval(), reference.eval()
        torch.testing.assert_close(head(want["out"]), reference.classifier(want["out"]))


def test_segmenting_imports_neither_torchvision_nor_dynamo() -> None:
    # torchvision's ops import torch._dynamo: about 2.4 s of every `metseg segment`
    code = (
        "import sys\n"
        "from napari_metseg.cli import main\n"
        "from napari_metseg.cohort import segment_cohort\n"
        "from napari_metseg.model import build_model, load_model, ModelConfig\n"
        "load_model(None), build_model(ModelConfig(backbone='resnet50'))\n"
        "print(sorted({'torchvision', 'torch._dynamo'} & set(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"

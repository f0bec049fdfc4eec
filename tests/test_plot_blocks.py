"""`landscape analyze --per-layer` on a transformer writes one group per parameter block (what it is, which
parameters and slices it holds), and `landscape plot FILE --kind blocks` draws their spectra side by side."""

from __future__ import annotations

import itertools
import json

import matplotlib.colors as mcolors
import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text
from torch.nn import functional as F

from landscape import store
from landscape.cli import main
from landscape.errors import StoreError
from landscape.models import gpt
from landscape.param_blocks import KINDS, model_blocks
from landscape.plot.blocks import KIND_COLORS, plot_blocks
from reference import double_backward_hessian

TINY = dict(vocab_size=11, seq_len=6, d_model=8, n_layers=1, n_heads=2, d_ff=16)


def shifted_cross_entropy(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Position t predicts token t + 1 (the test's own next-token loss)."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """A tiny gpt checkpoint, its token data, and the results of analyze --per-layer (float64) on them."""
    folder = tmp_path_factory.mktemp("blocks")
    torch.manual_seed(0)
    model = gpt(**TINY)
    torch.save(model.state_dict(), folder / "gpt.pt")
    tokens = np.random.default_rng(0).integers(0, 11, (4, 6))
    np.save(folder / "tokens.npy", tokens)
    out = folder / "r.h5"
    assert main(["analyze", str(folder / "gpt.pt"), "--model", "gpt", "--model-kwargs", json.dumps(TINY),
                 "--data", str(folder / "tokens.npy"), "--per-layer", "--metrics", "eigs,density", "--top-k", "2",
                 "--density-probes", "2", "--density-steps", "12", "--tol", "1e-10", "--dtype", "float64",
                 "--quiet", "-o", str(out)]) == 0
    return model, torch.as_tensor(tokens), out


def test_each_block_is_stored_with_what_it_is_and_its_top_eigenvalues(analysed):
    model, tokens, out = analysed
    H = double_backward_hessian(model.double().eval(), tokens, tokens, shifted_cross_entropy)
    offsets = dict(zip(dict(model.named_parameters()),
                       np.cumsum([0] + [p.numel() for p in model.parameters()])))
    with store.open_results(out) as handle:
        layers = handle["checkpoints/gpt/layers"]
        assert set(layers) == {b.name for b in model_blocks(model)}
        for order, block in enumerate(model_blocks(model)):
            attrs = store.get_attrs(layers[block.name])
            assert attrs["kind"] == block.kind and attrs["order"] == order and attrs["numel"] == block.numel
            assert list(attrs["params"]) == block.params and list(attrs["slices"]) == [""] * len(block.params)
            index = np.concatenate([np.arange(offsets[n], offsets[n] + model.get_parameter(n).numel())
                                    for n in block.params])
            truth = torch.linalg.eigvalsh(H[index][:, index]).numpy()[::-1][:2]
            values = store.read_result(layers[block.name]["eigen"]).values
            np.testing.assert_allclose(values, truth, rtol=1e-7, atol=1e-9 * float(H.abs().max()), err_msg=block.name)


def overlapping_texts(fig) -> list[tuple[str, str]]:
    """Pairs of visible, non-empty texts of ``fig`` whose boxes overlap once drawn."""
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    boxes = [(t.get_text(), t.get_window_extent(renderer).padded(-0.5)) for t in texts]
    return [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2) if box_a.overlaps(box_b)]


def test_blocks_figure_has_a_panel_per_block_coloured_by_kind_with_no_text_overlapping(analysed, tmp_path):
    model, _, out = analysed
    fig = plot_blocks(out, tmp_path / "blocks")
    for suffix in (".png", ".pdf"):
        assert (tmp_path / f"blocks{suffix}").stat().st_size > 1000
    blocks = model_blocks(model)
    assert len(fig.axes) == len(blocks)
    for ax, block in zip(fig.axes, blocks):
        labels = [t.get_text() for t in ax.texts]
        assert labels[:1] == [block.name]
        assert ax.get_xscale() == "symlog" and ax.get_yscale() == "log"
        assert mcolors.same_color(ax.lines[0].get_color(), KIND_COLORS[block.kind])
    lambda_max = [max(store.read_results(out)["gpt"].layers[b.name]["eigen"].values) for b in blocks]
    assert [float(ax.texts[1].get_text()) for ax in fig.axes] == pytest.approx(lambda_max, rel=1e-2)
    assert len({ax.get_xlim() for ax in fig.axes}) == 1  # one shared eigenvalue axis
    legend = {t.get_text() for t in fig.legends[0].get_texts()}
    assert legend == {b.kind for b in blocks}
    assert overlapping_texts(fig) == []


def test_every_block_kind_has_a_colour():
    assert list(KIND_COLORS) == list(KINDS)


def test_plot_kind_blocks_from_the_command_line_and_its_errors(analysed, tmp_path, capsys):
    _, _, out = analysed
    assert main(["plot", str(out), "--kind", "blocks", "--checkpoint", "gpt", "-o", str(tmp_path / "b")]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "b.png"), str(tmp_path / "b.pdf")]
    with pytest.raises(StoreError, match="no checkpoint 'nope'"):
        plot_blocks(out, None, checkpoint="nope")
    whole = tmp_path / "whole.h5"
    with store.open_results(out) as handle:
        density = store.read_result(handle["checkpoints/gpt/density"])
    with store.update_results(whole) as handle:
        store.write_checkpoint(handle, "gpt", {"density": density}, attrs={"path": "gpt.pt"})
    assert main(["plot", str(whole), "--kind", "blocks", "-o", str(tmp_path / "c")]) == 2
    assert "--per-layer" in capsys.readouterr().err


def test_a_long_model_gets_columns_and_still_no_text_overlaps(tmp_path):
    from landscape.linalg import DenseOperator, lanczos, spectral_density
    from reference import spectrum_matrix

    blocks = model_blocks(gpt(**{**TINY, "n_layers": 4}))  # 2 + 4 × 8 + 2 = 36 blocks: two columns
    out = tmp_path / "long.h5"
    layers = {}
    for order, block in enumerate(blocks):
        scale = 10.0 ** (order % 7 - 4)
        op = DenseOperator(spectrum_matrix(scale * np.linspace(-0.2, 1.0, 12), seed=order))
        layers[block.name] = (block.attrs(order), {"eigen": lanczos(op, 1), "density": spectral_density(
            op, num_probes=1, num_steps=6)})
    with store.update_results(out) as handle:
        store.write_checkpoint(handle, "step_300", {}, attrs={"path": "gpt.pt", "step": 300}, layers=layers)
    fig = plot_blocks(out, None)
    assert len(fig.axes) == 36 and len({round(ax.get_position().x0, 6) for ax in fig.axes}) == 2
    assert [ax.texts[0].get_text() for ax in fig.axes] == [b.name for b in blocks]  # the model's order
    assert overlapping_texts(fig) == []

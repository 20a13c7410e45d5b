"""NF4 from scratch (minilora.quant): code book, packing, block-wise round trip, sizes."""
import math

import pytest
import torch

from minilora.quant import NF4, dequantize_nf4, nf4_codebook, nf4_nbytes, pack_4bit, quantize_nf4, unpack_4bit

PAPER = [-1, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0, 0.0796, 0.1609, 0.2461, 0.3379,
         0.4407, 0.5626, 0.7230, 1]
# bitsandbytes' hard-coded NF4 table (its CPU kernel and create_normal_map), in float32
BNB = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
       0.7229568362236023, 1.0]
HALF_GAP = (NF4[1:] - NF4[:-1]).max().item() / 2


def test_codebook_values():
    assert NF4.dtype == torch.float32 and NF4.shape == (16,)
    torch.testing.assert_close(NF4, torch.tensor(PAPER), atol=1e-4, rtol=0)
    assert torch.equal(NF4, torch.tensor(BNB))  # bit for bit
    assert NF4[7] == 0 and NF4[0] == -1 and NF4[15] == 1 and bool((NF4[1:] > NF4[:-1]).all())
    assert not torch.equal(nf4_codebook(0.99), NF4)  # the offset matters
    with pytest.raises(ValueError):
        nf4_codebook(0.4)


def test_pack_unpack_all_codes_and_nibble_order():
    codes = torch.arange(16, dtype=torch.uint8)
    packed = pack_4bit(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == 8
    assert packed.tolist() == [0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF]  # first code: high nibble
    assert torch.equal(unpack_4bit(packed, 16), codes)
    assert pack_4bit(torch.tensor([0xA])).tolist() == [0xA0]  # odd count: low nibble of the last byte is 0
    for n in (1, 3, 17, 1001):
        c = torch.randint(0, 16, (n,), dtype=torch.uint8)
        p = pack_4bit(c)
        assert p.numel() == math.ceil(n / 2)
        assert torch.equal(unpack_4bit(p, n), c)


@pytest.mark.parametrize("bad", [torch.tensor([16]), torch.tensor([-1]), torch.tensor([0.5])])
def test_pack_rejects_bad_codes(bad):
    with pytest.raises(ValueError):
        pack_4bit(bad)


@pytest.mark.parametrize("blocksize, error, fragment", [
    (0, ValueError, "blocksize must be an integer >= 2, got 0"),
    (-64, ValueError, "blocksize must be an integer >= 2, got -64"),
    (63, ValueError, "blocksize must be an even integer >= 2, got 63"),
    (64.0, TypeError, r"blocksize must be an integer >= 2, got 64.0 \(float\)"),
    (True, TypeError, r"got True \(bool\)"),
    ("64", TypeError, r"got '64' \(str\)"),
])
def test_bad_blocksize(blocksize, error, fragment):
    with pytest.raises(error, match=fragment):
        quantize_nf4(torch.randn(128), blocksize=blocksize)
    with pytest.raises(error, match=fragment):
        nf4_nbytes(128, blocksize)


@pytest.mark.parametrize("w", [torch.arange(64), torch.ones(64, dtype=torch.bool), torch.empty(0),
                               torch.tensor([1.0, float("nan")])])
def test_bad_input(w):
    with pytest.raises(ValueError):
        quantize_nf4(w)


def test_wrong_types_are_type_errors():
    with pytest.raises(TypeError, match="needs a floating-point torch.Tensor, got list"):
        quantize_nf4([1.0, 2.0])
    with pytest.raises(TypeError, match="double_quant must be True or False"):
        quantize_nf4(torch.randn(64), double_quant=1)
    with pytest.raises(TypeError, match="takes an NF4Tensor"):
        dequantize_nf4(torch.randn(64))
    with pytest.raises(TypeError, match="codes must be an integer torch.Tensor"):
        pack_4bit([1, 2])
    with pytest.raises(TypeError, match="n must be an integer >= 0"):
        unpack_4bit(pack_4bit(torch.tensor([1, 2])), 2.0)
    with pytest.raises(TypeError, match="offset must be a number"):
        nf4_codebook("0.9")


def test_codes_are_nearest_codebook_values():
    torch.manual_seed(2)
    w = torch.randn(40, 64)  # reference: bitsandbytes' CPU kernel, argmin |w/absmax - NF4|
    absmax = w.abs().amax(dim=1, keepdim=True)
    ref = (w / absmax)[..., None].sub(NF4).abs().argmin(-1).reshape(-1)
    q = quantize_nf4(w, blocksize=64)
    assert torch.equal(unpack_4bit(q.codes, w.numel()).long(), ref)
    assert torch.equal(q.absmax, absmax.squeeze(1))


def test_codebook_points_are_exact():
    w = torch.cat([NF4 * 3.0, NF4.flip(0) * 0.25])  # two blocks of 16, absmax 3 and 0.25
    q = quantize_nf4(w, blocksize=16)
    torch.testing.assert_close(q.absmax, torch.tensor([3.0, 0.25]))
    assert torch.equal(dequantize_nf4(q), w)
    zero = dequantize_nf4(quantize_nf4(torch.zeros(64)))  # an all-zero block: no 0/0
    assert torch.equal(zero, torch.zeros(64))


@pytest.mark.parametrize("double_quant", [False, True])
def test_gaussian_round_trip_error(double_quant):
    torch.manual_seed(0)
    w = torch.randn(256, 512)
    q = quantize_nf4(w, blocksize=64, double_quant=double_quant)
    w_hat = dequantize_nf4(q)
    assert w_hat.shape == w.shape and w_hat.dtype == w.dtype
    rel = ((w_hat - w).norm() / w.norm()).item()
    assert 0.05 < rel < 0.1, rel
    err = (w_hat - w).abs().view(-1, 64)
    absmax = w.abs().view(-1, 64).amax(dim=1, keepdim=True)
    if not double_quant:
        assert bool((err <= HALF_GAP * absmax + 1e-6).all())
    else:  # the int8 constants add at most one half step of their own grid
        c = q.block_absmax()
        assert (c - absmax.squeeze()).abs().max() <= q.absmax_scale.max() / 254 + 1e-6
        assert bool((err <= HALF_GAP * absmax + (c - absmax.squeeze()).abs()[:, None] + 1e-5).all())
    # a uniform 4-bit grid on the same blocks does worse on Gaussian weights: the point of NF4
    uniform = torch.linspace(-1, 1, 16)
    blocks = w.view(-1, 64) / absmax
    nearest = uniform[(blocks[..., None] - uniform).abs().argmin(-1)] * absmax
    assert ((nearest.view_as(w) - w).norm() / w.norm()).item() > rel * 1.05


def test_padding_partial_block_and_dtype():
    torch.manual_seed(1)
    w = torch.randn(3, 7, dtype=torch.bfloat16)  # 21 numbers: odd, and 2 blocks of 16 with padding
    q = quantize_nf4(w, blocksize=16)
    assert q.codes.numel() == 11 and q.absmax.numel() == 2
    assert q.absmax[1] == w.reshape(-1)[16:].float().abs().max()
    w_hat = dequantize_nf4(q)
    assert w_hat.shape == (3, 7) and w_hat.dtype == torch.bfloat16
    assert dequantize_nf4(q, torch.float64).dtype == torch.float64
    assert ((w_hat.float() - w.float()).norm() / w.float().norm()) < 0.15


def test_sizes_4096_square():
    w = torch.randn(4096, 4096)
    q = quantize_nf4(w)
    assert q.codes.dtype == torch.uint8 and q.codes.numel() == 8_388_608
    assert q.absmax.dtype == torch.float32 and q.absmax.numel() == 262_144
    assert q.nbytes() == 8_388_608 + 262_144 * 4 == nf4_nbytes(4096 * 4096)
    assert q.bits_per_param() == 4.5
    dq = quantize_nf4(w, double_quant=True)
    assert dq.absmax.dtype == torch.int8 and dq.absmax.numel() == 262_144
    assert dq.absmax_scale.dtype == torch.float32 and dq.absmax_scale.numel() == 1024
    assert dq.absmax_mean.numel() == 1
    assert dq.nbytes() == 8_388_608 + 262_144 + 1024 * 4 + 4 == nf4_nbytes(4096 * 4096, double_quant=True)
    assert dq.bits_per_param() == pytest.approx(4 + 8 / 64 + 32 / (64 * 256), abs=1e-5)
    assert dq.bits_per_param() == pytest.approx(4.127, abs=5e-4)
    assert w.numel() * 4 / q.nbytes() == pytest.approx(32 / 4.5)


@pytest.mark.parametrize("shape,bs", [((5,), 2), ((33, 3), 64), ((1000, 3), 64), ((17, 300), 128)])
def test_nbytes_formula_odd_shapes(shape, bs):
    for dq in (False, True):
        q = quantize_nf4(torch.randn(shape), blocksize=bs, double_quant=dq)
        assert q.nbytes() == nf4_nbytes(math.prod(shape), bs, dq)
        assert torch.isfinite(dequantize_nf4(q)).all()

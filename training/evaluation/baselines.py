"""Hand-made features the CPC embeddings are compared against, one per modality.

- audio: MFCC statistics, written here in NumPy: pre-emphasis, 25 ms Hann
  frames every 10 ms, power spectrum, a triangular mel filterbank (HTK mel
  scale), log, orthonormal DCT-II; the mean and standard deviation over frames
  of the coefficients and of their deltas (`4 * n_mfcc` numbers per clip);
  `mfcc` itself gives the per-frame coefficients (one frame per 10 ms, the
  CPC audio step) for the frame-level probe of `training.evaluation.evaluate`.
- image: raw pixels of the image resized (shorter side) and centre-cropped
  as the model's own input, at `size`² RGB (`3 * size²` numbers).
- text: TF-IDF of word unigrams and bigrams (scikit-learn), fitted on the
  training documents only, so no test word leaks into the vocabulary.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer

from service.preprocess.image import image_to_array

PRE_EMPHASIS = 0.97  # first-order high-pass before framing, as in most MFCC front ends
FRAME_SECONDS = 0.025  # analysis window
HOP_SECONDS = 0.010  # one frame per 10 ms, the CPC audio step
N_MELS = 40  # triangular filters between 0 Hz and Nyquist
LOG_FLOOR = 1e-10  # added to mel energies before the log (silence stays finite)
PIXEL_SIZE = 16  # raw-pixel baseline: 16x16 RGB = 768 numbers
TFIDF_MAX_FEATURES = 50_000  # most frequent training n-grams kept


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int = N_MELS) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] triangular filters, evenly spaced on the mel scale.

    Each filter rises from its lower edge to its centre and falls to its upper
    edge, evaluated at the exact frequency of every FFT bin (so narrow low
    filters are never empty the way bin-rounded edges can be).
    """
    edges_mel = np.linspace(0.0, _hz_to_mel(np.array(sample_rate / 2.0)), n_mels + 2)
    edges = _mel_to_hz(edges_mel)  # [n_mels + 2] Hz
    bins = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)  # [F] Hz
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling))  # [n_mels, F]


def dct_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Orthonormal DCT-II as a matrix [n_out, n_in] (rows: cosine bases)."""
    k = np.arange(n_out)[:, None]
    n = np.arange(n_in)[None, :]
    basis = np.cos(np.pi * k * (2 * n + 1) / (2 * n_in)) * np.sqrt(2.0 / n_in)
    basis[0] /= np.sqrt(2.0)
    return basis


def mfcc_hop_samples(sample_rate: int) -> int:
    """Samples between MFCC frames: frame j's window starts at sample j * hop."""
    return max(1, round(HOP_SECONDS * sample_rate))


def mfcc(wave: np.ndarray, sample_rate: int, n_mfcc: int = 20) -> np.ndarray:
    """MFCCs of a mono waveform: float64 [frames, n_mfcc] (at least one frame)."""
    if n_mfcc > N_MELS:
        raise ValueError(f"n_mfcc must be at most {N_MELS}, got {n_mfcc}")
    win = max(1, round(FRAME_SECONDS * sample_rate))
    hop = mfcc_hop_samples(sample_rate)
    n_fft = 1 << (win - 1).bit_length()  # next power of two
    x = np.asarray(wave, dtype=np.float64)
    x = np.append(x[:1], x[1:] - PRE_EMPHASIS * x[:-1]) if x.size else np.zeros(1)
    if x.size < win:
        x = np.pad(x, (0, win - x.size))
    frames = np.lib.stride_tricks.sliding_window_view(x, win)[::hop]  # [T, win]
    spectrum = np.fft.rfft(frames * np.hanning(win), n=n_fft)  # [T, F]
    power = (spectrum.real**2 + spectrum.imag**2) / n_fft
    mel = power @ mel_filterbank(sample_rate, n_fft).T  # [T, n_mels]
    return np.log(mel + LOG_FLOOR) @ dct_matrix(n_mfcc, N_MELS).T  # [T, n_mfcc]


def mfcc_features(
    wave: np.ndarray, sample_rate: int, n_mfcc: int = 20, deltas: bool = True
) -> np.ndarray:
    """float32 [2 * n_mfcc * (2 if deltas else 1)]: mean then std over frames."""
    return mfcc_statistics(mfcc(wave, sample_rate, n_mfcc), deltas)


def mfcc_statistics(coeffs: np.ndarray, deltas: bool = True) -> np.ndarray:
    """`mfcc_features` of MFCCs already computed ([frames, n_mfcc] from `mfcc`)."""
    if deltas:
        delta = np.gradient(coeffs, axis=0) if len(coeffs) > 1 else np.zeros_like(coeffs)
        coeffs = np.concatenate([coeffs, delta], axis=1)
    return np.concatenate([coeffs.mean(axis=0), coeffs.std(axis=0)]).astype(np.float32)


def pixel_features(image: Image.Image, size: int = PIXEL_SIZE) -> np.ndarray:
    """float32 [size * size * 3] in [0, 1]: the image resized and centre-cropped to size²."""
    return image_to_array(image, size).reshape(-1)


def tfidf_features(
    train_texts: list[str], test_texts: list[str], max_features: int = TFIDF_MAX_FEATURES
) -> tuple[sparse.csr_matrix, sparse.csr_matrix, TfidfVectorizer]:
    """TF-IDF rows (unit length) for both splits, the vocabulary learnt from `train_texts` only."""
    vectorizer = TfidfVectorizer(
        ngram_range=(1, 2), sublinear_tf=True, max_features=max_features, dtype=np.float32
    )
    train = sparse.csr_matrix(vectorizer.fit_transform(train_texts))
    test = sparse.csr_matrix(vectorizer.transform(test_texts))
    return train, test, vectorizer

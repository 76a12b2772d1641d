"""Band-limited resampling: frequency and level kept, nothing aliased into the new band."""

from __future__ import annotations

import numpy as np
import pytest
from audio_fixtures import peak_frequency, rms_db, sine

from edgeasr.audio.io import resample

EDGE = 1600  # samples trimmed at both ends: filter start-up is not what we measure


@pytest.mark.parametrize("orig_rate", [44100, 48000, 22050, 8000, 32000, 16001])
def test_tone_keeps_frequency_and_level(orig_rate):
    x = sine(1000, orig_rate, 1.2, 0.5)
    y = resample(x, orig_rate, 16000)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - len(x) * 16000 / orig_rate) <= 1
    body = y[EDGE:-EDGE]
    # 1 s of body at 16 kHz: FFT bins are ~1 Hz wide.
    assert abs(peak_frequency(body, 16000) - 1000) <= 1.0
    assert abs(rms_db(body) - rms_db(x[len(x) // 4 : -len(x) // 4])) < 0.1


def test_passband_reaches_near_nyquist():
    x = sine(7900, 48000, 1.0, 0.5)
    body = resample(x, 48000, 16000)[EDGE:-EDGE]
    assert abs(peak_frequency(body, 16000) - 7900) <= 1.0
    assert rms_db(body) > rms_db(x) - 1.0  # preserved (within 1 dB) at 98.75% of Nyquist


@pytest.mark.parametrize("freq", [8500, 11000, 15000, 23000])
def test_above_nyquist_is_rejected_not_aliased(freq):
    x = sine(freq, 48000, 1.0, 0.5)
    body = resample(x, 48000, 16000)[EDGE:-EDGE]
    assert rms_db(body) < rms_db(x) - 60.0


def test_upsampling_adds_nothing_above_old_nyquist():
    x = sine(3000, 8000, 1.0, 0.5)
    y = resample(x, 8000, 16000)[EDGE:-EDGE]
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y)))) ** 2
    freqs = np.fft.rfftfreq(len(y), 1 / 16000)
    image = spectrum[(freqs > 4200)].sum()  # the 5 kHz image of a 3 kHz tone
    assert 10 * np.log10(image / spectrum.sum()) < -60


def test_identity_and_multichannel():
    x = sine(440, 16000, 0.1)
    y = resample(x, 16000, 16000)
    np.testing.assert_array_equal(x, y)
    assert y is not x
    stereo = np.stack([sine(440, 48000, 0.5), sine(880, 48000, 0.5)], axis=1)
    out = resample(stereo, 48000, 16000)
    assert out.shape == (8000, 2)
    assert abs(peak_frequency(out[:, 1], 16000) - 880) <= 2
    assert resample(np.zeros(0, np.float32), 44100, 16000).shape == (0,)
    with pytest.raises(ValueError):
        resample(x, 0, 16000)

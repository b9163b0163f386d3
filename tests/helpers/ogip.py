"""OGIP conformance checks shared by the spectra and real-data tests."""

from __future__ import annotations

import numpy as np
from astropy.io import fits


def check_ogip_pha(path, *, n_chan: int) -> fits.Header:
    """astropy-based OGIP type-I checks (OGIP/92-007): structure, keywords, channel numbering; no warnings."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with fits.open(path, checksum=True) as h:
            h.verify("exception")
    with fits.open(path) as h:
        sp = h["SPECTRUM"]
        hdr = sp.header
        for key in (
            "TELESCOP",
            "INSTRUME",
            "FILTER",
            "EXPOSURE",
            "BACKSCAL",
            "AREASCAL",
            "BACKFILE",
            "RESPFILE",
            "ANCRFILE",
            "CORRFILE",
            "CORRSCAL",
            "HDUCLASS",
            "HDUCLAS1",
            "HDUCLAS2",
            "HDUCLAS3",
            "CHANTYPE",
            "DETCHANS",
            "POISSERR",
        ):
            assert key in hdr, key
        assert hdr["HDUCLASS"] == "OGIP" and hdr["HDUCLAS1"] == "SPECTRUM" and hdr["HDUCLAS3"] == "COUNT"
        assert hdr["DETCHANS"] == n_chan == len(sp.data)
        assert hdr["TLMIN1"] == 0 and hdr["TLMAX1"] == n_chan - 1
        assert np.array_equal(sp.data["CHANNEL"], np.arange(n_chan))
        assert hdr["EXPOSURE"] > 0 and hdr["BACKSCAL"] > 0 and hdr["POISSERR"] is True
        c = sp.data["COUNTS"]
        assert np.all(c >= 0) and np.all(c == np.round(c))
        if "GROUPING" in sp.columns.names:
            assert set(np.unique(sp.data["GROUPING"])) <= {-1, 0, 1}
            assert set(np.unique(sp.data["QUALITY"])) <= {0, 1, 2, 5}
        return hdr.copy()

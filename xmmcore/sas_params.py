"""Valid parameters of every SAS/ESAS task the project calls (argv whitelists).

Transcribed from the SAS 21/22 task documentation (``$SAS_DIR/doc/<task>``, the parameter tables of
xmm-tools.cosmos.esa.int/external/sas/current/doc/<task>), the ESAS cookbook for SAS 21 (appendix A,
"Calling Parameters"), and the ``XPROCn`` history keywords of the real SAS products in
``../shared/data/xmm`` (evselect, specgroup, rmfgen, arfgen, eexpmap, atthkgen: every parameter the
task wrote there). :func:`check_argv` refuses any key not listed, and enumerated values outside their
list, so a typo or an undocumented parameter (``withimages`` of mosspectra/pnspectra) fails in the
tests instead of in the first real run. The stub SAS tools used by the tests check argv with it too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .errors import ConfigError

__all__ = ["ENUMS", "TASK_PARAMS", "check_argv", "unknown_params"]


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


_BOOL = ("yes", "no", "true", "false", "T", "F", "Y", "N")

#: Task -> valid parameter names.
TASK_PARAMS: dict[str, frozenset[str]] = {
    # XPROC0 of a907 eclean lists (evselect-3.62) and psrj0855/ngc7793 spectra
    "evselect": _names("""table filteredset withfilteredset keepfilteroutput flagcolumn flagbit destruct dssblock
        expression filtertype cleandss updateexposure filterexposure writedss blockstocopy
        attributestocopy energycolumn zcolumn zerrorcolumn withzerrorcolumn withzcolumn
        ignorelegallimits imageset xcolumn ycolumn ximagebinsize yimagebinsize squarepixels ximagesize
        yimagesize imagebinning ximagemin ximagemax withxranges yimagemin yimagemax withyranges
        imagedatatype withimagedatatype raimagecenter decimagecenter withcelestialcenter withimageset
        spectrumset spectralbinsize specchannelmin specchannelmax withspecranges withspectrumset
        rateset timecolumn timebinsize timemin timemax withtimeranges maketimecolumn makeratecolumn
        withrateset histogramset histogramcolumn histogrambinsize histogrammin histogrammax
        withhistoranges withhistogramset"""),
    # tabgtigen documentation (SAS 21)
    "tabgtigen": _names("table gtiset expression timecolumn mingtisize prefraction postfraction"),
    # ESAS cookbook A: espfilt calling parameters
    "espfilt": _names("""eventfile withoot ootfile elow ehigh keepinterfiles method withsmoothing smooth withbinning
        binsize ratio rangescale allowsigma limits timecolumn"""),
    # ESAS cookbook A: cheese (wraps edetect_chain + region + makemask)
    "cheese": _names("""mos1file mos2file pnfile pnootfile elowlist ehighlist mlmin scale ratetotal rate dist
        clobber keepinterfiles"""),
    # mosspectra-0.20 parameter table (SAS 21): no withimages (elow=ehigh=0 means spectra only)
    "mosspectra": _names("""eventfile cornerfile imagefile expmap withsrcrem maskdet masksky withregion regionfile
        keepinterfiles pattern elow ehigh ccds clobber"""),
    # pnspectra-0.18 parameter table (SAS 21)
    "pnspectra": _names("""eventfile ootevtfile cornerfile ootcornfile imagefile ootimagefile expmap withsrcrem maskdet
        masksky withregion regionfile keepinterfiles pattern elow ehigh quads clobber"""),
    # ESAS cookbook A: mosback / pnback calling parameters
    "mosback": _names("inspecfile outspecfile rmffile withplotfiles inimgfile outimgfile elow ehigh ccds"),
    "pnback": _names("""inspecfile inspecoot outspecfile rmffile withplotfiles inimgfile inimgoot outimgfile elow
        ehigh quads"""),
    # backscale documentation (SAS 21)
    "backscale": _names(
        "spectrumset badpixlocation withbadpixcorr useodfatt ignoreoutoffov badpixelresolution withbadpixres"
    ),
    # XPROC0 of a2443_fakeit/pnS004-A2443_reg2.rmf (rmfgen-2.5.1)
    "rmfgen": _names("""rmfset threshold withenergybins energymin energymax nenergybins spectrumset format detmaptype
        detmaparray withdetbounds detxoffset detyoffset detxbins detybins withdetbins raweventfile
        correctforpileup filterdss withfilteredset filteredset withrmfset psfenergy withsourcepos
        sourcecoords sourcex sourcey extendedsource modeleffarea modelquantumeff modelfiltertrans
        modelcontamination modelee modelootcorr eegridfactor withbadpixcorr badpixlocation setbackscale
        keeparfset useodfatt ignoreoutoffov crossreg_spectrumset crossregionarf psfmodel
        badpixelresolution withbadpixres applyxcaladjustment acceptchanrange"""),
    # XPROC of the psrj0855 / a2443 ARFs (arfgen)
    "arfgen": _names("""arfset spectrumset withrmfset rmfset badpixlocation withbadpixcorr extendedsource detmaptype
        detmaparray withdetbounds detxoffset detyoffset detxbins detybins withdetbins filterdss
        withfilteredset filteredset psfenergy withsourcepos sourcecoords sourcex sourcey modeleffarea
        modelquantumeff modelfiltertrans modelcontamination modelee modelootcorr eegridfactor
        setbackscale keeparfset useodfatt ignoreoutoffov crossreg_spectrumset crossregionarf psfmodel
        badpixelresolution withbadpixres applyxcaladjustment badpixmaptype"""),
    # XPROC2 of ngc7793_ulx4/MOS2_spectrum_grp.fits (specgroup-1.7)
    "specgroup": _names("""spectrumset groupedset overwrite backgndset withbgdset mincounts withCounts minSN withminSN
        ratioabovebgnd withratioabovebgnd oversample withoversampling grouptemplate withtemplate ranges
        withranges regbinstart regbinend regbinwid withRegularBins units rmfset withrmfset arfset
        witharfset addfilenames hightolow lastbin setbad"""),
    # cifbuild documentation (SAS 21)
    "cifbuild": _names("""calindexset withccfpath ccfpath analysisdate category fullpath withobservationdate
        observationdate ignorecalindex masterindex withmasterindex"""),
    # odfingest documentation (SAS 21); withodfdir, usecanonicalname, writepath, usehousekeeping and oalcheck
    # as real SAS runs pass them (DAXA's process/xmm/setup.py, published reduction scripts)
    "odfingest": _names("""odfdir outdir summaryonly usesummaryfile findinstrumentmodes withfileverification withodfdir
        usecanonicalname writepath usehousekeeping oalcheck"""),
    # emchain / epchain documentation (SAS 21); addtaglenoise (emchain) and odfaccess, schedule, runbackground,
    # keepintermediate, runradmonfix (epchain) as DAXA's process/xmm/assemble.py passes them to SAS 21
    # (epchain withoutoftime=Y first, then the imaging run, as the epchain page advises)
    "emchain": _names("""odf exposures instruments ccds ingtiset filteratt filterhk badpixfindalgo randomize
        applyflaregti runccdloop startfromodf stopafterbadpixfind runevlistcomb makeflaregti
        rejectbadevents withoutoftime addtaglenoise"""),
    "epchain": _names("""odf exposure withoutoftime ccds runatthkgen runepframes runbadpixfind runbadpix runepevents
        runevlistcomb runemevents runepflagtimes runepclean sortorder withinstexpids odfaccess schedule
        runbackground keepintermediate runradmonfix"""),
    # XPROC0 of a907 images (atthkgen, eexpmap); emosaic documentation
    "atthkgen": _names("atthkset timestep withtimeranges timebegin timeend withpreqgti preqgtifile"),
    "eexpmap": _names("""imageset attitudeset eventset expimageset pimin pimax attrebin usedlimap usefastpixelization
        withdetcoords withvignetting"""),
    "emosaic": _names("imagesets mosaicedset withexposure exposuresets"),
    "sasversion": frozenset(),
}

#: (task, parameter) -> allowed values.
ENUMS: dict[tuple[str, str], tuple[str, ...]] = {
    ("espfilt", "method"): ("histogram", "ratio"),
    ("evselect", "imagebinning"): ("imageSize", "binSize"),
    ("evselect", "filtertype"): ("expression", "dataset"),
    ("arfgen", "detmaptype"): ("flat", "psf", "dataset"),
    ("rmfgen", "detmaptype"): ("flat", "psf", "dataset"),
    ("cifbuild", "category"): ("XMMCCF",),
    ("specgroup", "units"): ("CHAN", "KEV", "ANG"),
    ("epchain", "odfaccess"): ("odf", "all"),
    **{
        (task, name): _BOOL
        for task, names in {
            "evselect": (
                "withrateset withfilteredset withspectrumset withimageset withspecranges destruct keepfilteroutput "
                "updateexposure filterexposure maketimecolumn makeratecolumn"
            ),
            "arfgen": "extendedsource withrmfset withbadpixcorr",
            "rmfgen": "extendedsource withenergybins",
            "espfilt": "withsmoothing withoot keepinterfiles withbinning",
            "mosspectra": "withsrcrem withregion keepinterfiles clobber",
            "pnspectra": "withsrcrem withregion keepinterfiles clobber",
            "specgroup": "withrmfset witharfset withbgdset withCounts withoversampling",
            "epchain": "withoutoftime",
            "emchain": "addtaglenoise makeflaregti",
            "odfingest": "withodfdir findinstrumentmodes usecanonicalname",
        }.items()
        for name in names.split()
    },
}


def _split(argv: Sequence[str]) -> tuple[str, list[tuple[str, str]]]:
    task = str(argv[0]).rsplit("/", 1)[-1]
    pairs = []
    for arg in argv[1:]:
        name, sep, value = str(arg).partition("=")
        pairs.append((name, value) if sep else (name, ""))
    return task, pairs


def unknown_params(argv: Sequence[str]) -> list[str]:
    """Problems of ``argv`` against the whitelist: unknown task, unknown keys, values outside an enum."""
    task, pairs = _split(argv)
    if task not in TASK_PARAMS:
        return [f"{task}: not a task of the whitelist"]
    valid = TASK_PARAMS[task]
    problems = []
    for name, value in pairs:
        if name not in valid:
            problems.append(f"{task}: unknown parameter {name!r}")
            continue
        allowed = ENUMS.get((task, name))
        if allowed is not None and value not in allowed:
            problems.append(f"{task}: {name}={value!r} is not one of {', '.join(allowed)}")
    return problems


def check_argv(argv: Sequence[str], *, context: str = "") -> None:
    """Raise ``ConfigError`` naming every problem of ``argv`` (see :func:`unknown_params`)."""
    problems = unknown_params(argv)
    if problems:
        where = f" ({context})" if context else ""
        raise ConfigError("invalid SAS argv" + where + ": " + "; ".join(problems))


def whitelist_summary() -> Mapping[str, int]:
    """Task -> number of valid parameters (for docs and the report)."""
    return {t: len(p) for t, p in TASK_PARAMS.items()}

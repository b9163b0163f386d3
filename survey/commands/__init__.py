"""Sub-commands of ``xmm-survey`` contributed by other modules.

Each module here (``fit``, ``models``, ``simulate``, ``plan``, ``catalog``) exposes
``add_parser(subparsers)``, which adds its parser and sets ``func(args) -> int`` with
``parser.set_defaults(func=...)``. ``survey.cli`` registers every one that imports.
"""

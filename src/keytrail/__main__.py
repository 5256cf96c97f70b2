"""`python -m keytrail`: the `keytrail` command."""

try:
    from keytrail.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python loads the CLI: quiet and 130, as at any later moment
    raise SystemExit(130) from None

main()

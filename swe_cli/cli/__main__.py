from swe_cli.cli import main

main()

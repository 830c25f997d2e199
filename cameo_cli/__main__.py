from cameo_cli.cli import main

main()

from chordctl.cli.main import main

main()

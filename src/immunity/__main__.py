from immunity.cli.app import main

main()

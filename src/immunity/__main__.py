from immunity.cli import main

main()

from pgcrdr.cli.main import main

main()

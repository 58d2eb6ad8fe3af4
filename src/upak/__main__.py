from upak.cli import main

main()

from editkit.cli import main

main()

from omnipolicy.cli import main

main()

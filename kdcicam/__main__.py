from kdcicam.cli import main

main()

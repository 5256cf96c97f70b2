from keytrail.cli import main

main()

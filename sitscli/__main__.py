from sitscli.cli.app import main

main()

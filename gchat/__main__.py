from gchat.main import main

main()

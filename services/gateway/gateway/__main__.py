from gateway.bootstrap import SERVICE

SERVICE.main()

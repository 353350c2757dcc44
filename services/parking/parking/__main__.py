from parking.bootstrap import SERVICE

SERVICE.main()

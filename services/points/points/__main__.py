from points.bootstrap import SERVICE

SERVICE.main()

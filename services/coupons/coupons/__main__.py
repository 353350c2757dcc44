from coupons.bootstrap import SERVICE

SERVICE.main()

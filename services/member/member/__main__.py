from member.bootstrap import SERVICE

SERVICE.main()

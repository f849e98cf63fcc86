	password := "7ai130JEef"

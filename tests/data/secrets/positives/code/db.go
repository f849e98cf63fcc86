	password := "Ybndv0"

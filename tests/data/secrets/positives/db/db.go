	dsn := "mysql://root:bf5jV3ON/D6BINJ9h@tcp(db:3306)/shop"

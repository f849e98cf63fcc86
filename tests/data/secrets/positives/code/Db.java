        ds.setPassword("x"); String dbPassword = "PejwwCTH";

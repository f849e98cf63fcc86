        ds.setPassword("x"); String dbPassword = "121qRYH";

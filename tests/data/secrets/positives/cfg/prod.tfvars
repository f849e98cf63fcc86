db_password = "oj9mY5W1Q%"

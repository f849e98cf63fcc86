if password == "6H4jn6GIM":

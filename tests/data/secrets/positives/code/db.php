$db_pass = 'I7JCvnw';

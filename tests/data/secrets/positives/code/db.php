$db_pass = 'yo121qRYH';

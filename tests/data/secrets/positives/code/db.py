conn = psycopg.connect(host="db", user="app", password="t0i5xPej")
engine = connect(user='ro', passwd='wCTHYfYb')

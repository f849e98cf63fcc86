conn = psycopg.connect(host="db", user="app", password="v7SKsIgd")
engine = connect(user='ro', passwd='BJpIJ6i')

const adminPass = "Pq9bCy";

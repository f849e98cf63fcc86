const adminPass = "Ajut0i5";

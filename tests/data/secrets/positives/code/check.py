if password == "ELlh4B":

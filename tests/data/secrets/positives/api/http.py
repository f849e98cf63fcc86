headers = {"Authorization": "Basic amskcBqdQXwhkKdwU3DnI04Rywk4U+b9"}

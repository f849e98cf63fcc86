r = requests.get("https://api.weather.test/v2/now?city=Oslo&api_key=e9498208629d5850029bcf2f9f7dcdb7")

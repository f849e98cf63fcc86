fetch(`https://maps.example.test/geo?q=x&apikey=vJIF5n1vFx8vEz0ymAbv1oIqh7zXs6iI`)

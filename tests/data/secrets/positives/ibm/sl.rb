url = "https://api.softlayer.com/soap/v3/ms5n8urgef8446km0nlsbgcct74nxxd0lgih2e6plzevcn5yeg58d6j07fnkw813"

from services.forecasting.main import service
from shared.service import serve

serve(service)

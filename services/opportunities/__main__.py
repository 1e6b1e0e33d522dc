from services.opportunities.main import service
from shared.service import serve

serve(service)

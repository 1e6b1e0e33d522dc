from services.scoring.main import service
from shared.service import serve

serve(service)
